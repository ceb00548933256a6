"""Type stubs of the native module tflq._tflq (use the public API in tflq instead)."""

from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

_Path = Union[str, PathLike[str]]
__version__: str

def quantize_file(
    input: _Path, output: _Path, options: Dict[str, Any], in_place: bool, fsync: bool
) -> str: ...
def quantize_bytes(data: bytes, options: Dict[str, Any]) -> Tuple[bytes, str]: ...
def quantize_dir(
    inputs: List[_Path],
    output: _Path,
    options: Dict[str, Any],
    jobs: int,
    in_place: bool,
    fsync: bool,
    skip_existing: bool,
    dry_run: bool,
    copy_others: bool,
    shard: Optional[str],
    progress: Optional[Callable[[int, int, str, str, Optional[str], List[str]], Any]],
) -> str: ...

class NativeReport:
    def json(self) -> str: ...
    def render(self, format: str, width: int, plots: int) -> str: ...

def report(model: _Path, against: Optional[_Path], options: Dict[str, Any], histograms: bool) -> NativeReport: ...
def inspect(model: _Path) -> str: ...
def run_cli(argv: List[str]) -> int: ...
