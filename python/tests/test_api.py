"""The API gives what the command gives: same bytes, same JSON, for every fixture and option set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import tflq
from conftest import MODELS, OPTION_SETS, drop_seconds, option_id, tflq_bin


class Fs(os.PathLike):
    """A PathLike that is not a pathlib.Path."""

    def __init__(self, p):
        self.p = str(p)

    def __fspath__(self):
        return self.p


@pytest.mark.parametrize("case", OPTION_SETS, ids=option_id)
@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_quantize_matches_the_command(model, case, tmp_path):
    flags, kwargs = case
    out = tmp_path / "out.tflite"
    r = tflq_bin("quantize", model, "-o", out, "--json", *flags, check=False)
    if r.returncode != 0:
        with pytest.raises(tflq.Error):
            tflq.quantize(model, out, **kwargs)
        return
    cli_bytes = out.read_bytes()
    cli_json = json.loads(r.stdout)
    out.unlink()
    summary = tflq.quantize(str(model), str(out), **kwargs)
    assert out.read_bytes() == cli_bytes
    assert drop_seconds(summary.to_dict()) == drop_seconds(cli_json)
    assert summary.to_dict()["input"] == str(model)
    # In memory: the same bytes, the same summary without the paths.
    data, s2 = tflq.quantize_bytes(model.read_bytes(), **kwargs)
    assert data == cli_bytes
    expect = drop_seconds(cli_json)
    del expect["input"], expect["output"]
    assert drop_seconds(s2.to_dict()) == expect


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_report_and_inspect_match_the_command(model, tmp_path):
    j = json.loads(tflq_bin("report", model, "--format", "json").stdout)
    rep = tflq.report(model)
    assert rep.to_dict() == j
    assert rep.tensors == j["tensors"]
    assert rep.to_csv() == tflq_bin("report", model, "--format", "csv").stdout
    assert rep.to_markdown() == tflq_bin("report", model, "--format", "markdown").stdout
    html = rep.to_html()
    assert html == tflq_bin("report", model, "--format", "html").stdout
    assert rep.rows() == [] or set(rep.rows()[0]) >= {"name", "sqnr_db"}
    assert tflq.inspect(Fs(model)) == json.loads(tflq_bin("inspect", model, "--json").stdout)


@pytest.mark.parametrize("case", OPTION_SETS[:7], ids=option_id)
def test_report_options_and_against(case, tmp_path):
    flags, kwargs = case
    model = Path(__file__).resolve().parents[2] / "fixtures" / "cnn.tflite"
    j = json.loads(tflq_bin("report", model, "--format", "json", *flags).stdout)
    assert tflq.report(model, **kwargs).to_dict() == j
    q = tmp_path / "q.tflite"
    tflq.quantize(model, q, **kwargs)
    ja = json.loads(tflq_bin("report", model, "--against", q, "--format", "json").stdout)
    assert tflq.report(model, against=Fs(q)).to_dict() == ja


def test_paths_str_pathlike_and_in_place(tmp_path):
    src = Path(__file__).resolve().parents[2] / "fixtures" / "mlp.tflite"
    a, b, c = tmp_path / "a.tflite", tmp_path / "b.tflite", tmp_path / "c.tflite"
    tflq.quantize(src, a)
    tflq.quantize(str(src), Fs(b))
    tflq.quantize(Fs(src), str(c))
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    with pytest.raises(TypeError, match="os.PathLike"):
        tflq.quantize(42, a)
    inplace = tmp_path / "in.tflite"
    inplace.write_bytes(src.read_bytes())
    with pytest.raises(tflq.SameFileError) as e:
        tflq.quantize(inplace, inplace)
    assert isinstance(e.value, OSError) and str(inplace) in str(e.value)
    assert inplace.read_bytes() == src.read_bytes()
    tflq.quantize(inplace, inplace, in_place=True)
    assert inplace.read_bytes() == a.read_bytes()


def test_quantize_dir_matches_the_command(tmp_path):
    fixtures = Path(__file__).resolve().parents[2] / "fixtures"
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    r = tflq_bin("quantize", fixtures, "-o", cli_out, "--json", "-q", "--mode", "dynamic", check=False)
    seen = []
    res = tflq.quantize_dir(fixtures, api_out, jobs=2, progress=lambda *a: seen.append(a), mode="dynamic")
    cli_lines = [json.loads(line) for line in r.stdout.splitlines()]
    api_lines = res.to_list()
    fix = lambda lines: [drop_seconds({k: v for k, v in d.items() if k != "output"}) for d in lines]  # noqa: E731
    assert fix(api_lines) == fix(cli_lines)
    assert res.ok == (r.returncode == 0)
    for f in cli_out.rglob("*.tflite"):
        assert (api_out / f.relative_to(cli_out)).read_bytes() == f.read_bytes()
    assert len(seen) == res.totals["models"] and seen[-1][0] == seen[-1][1] == len(seen)
    # Errors raised by the progress callback stop the batch and propagate.
    with pytest.raises(ZeroDivisionError):
        tflq.quantize_dir([fixtures], tmp_path / "stopped", progress=lambda *a: 1 / 0)
    with pytest.raises(tflq.BatchError, match="input folder"):
        tflq.quantize_dir(fixtures, fixtures, progress=False)


def test_fsync_false_matches_no_fsync(tmp_path):
    """``fsync=False`` is ``--no-fsync``: the same outputs, summaries and batch lines."""
    fixtures = Path(__file__).resolve().parents[2] / "fixtures"
    model = fixtures / "mlp.tflite"
    r = tflq_bin("quantize", model, "-o", tmp_path / "cli.tflite", "--json", "--no-fsync")
    s = tflq.quantize(model, tmp_path / "api.tflite", fsync=False)
    assert (tmp_path / "api.tflite").read_bytes() == (tmp_path / "cli.tflite").read_bytes()
    cli = drop_seconds({k: v for k, v in json.loads(r.stdout).items() if k != "output"})
    assert drop_seconds({k: v for k, v in s.to_dict().items() if k != "output"}) == cli
    res = tflq.quantize_dir(fixtures, tmp_path / "batch", progress=False, fsync=False)
    synced = tflq.quantize_dir(fixtures, tmp_path / "synced", progress=False)
    assert sorted(p.relative_to(tmp_path / "batch") for p in (tmp_path / "batch").rglob("*")) == sorted(
        p.relative_to(tmp_path / "synced") for p in (tmp_path / "synced").rglob("*")
    )
    for f in (tmp_path / "synced").rglob("*.tflite"):
        assert (tmp_path / "batch" / f.relative_to(tmp_path / "synced")).read_bytes() == f.read_bytes()
    assert res.totals["quantized"] == synced.totals["quantized"] > 0


def test_errors(tmp_path):
    fixtures = Path(__file__).resolve().parents[2] / "fixtures"
    missing = tmp_path / "missing.tflite"
    with pytest.raises(FileNotFoundError) as e:
        tflq.quantize(missing, tmp_path / "o.tflite")
    assert isinstance(e.value, tflq.FileError) and isinstance(e.value, tflq.Error)
    assert e.value.errno == 2 and e.value.filename == str(missing) and str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError):
        tflq.report(missing)
    with pytest.raises(FileNotFoundError):
        tflq.inspect(missing)
    with pytest.raises(FileNotFoundError):
        tflq.quantize(fixtures / "mlp.tflite", tmp_path / "no" / "such" / "dir" / "o.tflite")
    with pytest.raises(IsADirectoryError):
        tflq.quantize(fixtures, tmp_path / "o.tflite")
    assert not (tmp_path / "o.tflite").exists()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes((fixtures / "mlp.tflite").read_bytes()[:1000])
    with pytest.raises(tflq.ModelError) as e:
        tflq.quantize(bad, tmp_path / "o.tflite")
    assert str(bad) in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(tflq.ModelError, match="no TFL3 identifier"):
        tflq.quantize_bytes(b"\0" * 64)
    for kwargs, match in [
        ({"mode": "fast"}, r'mode: invalid value "fast" \(choose "weight-only", "dynamic"\)'),
        ({"granularity": "per-row"}, "granularity"),
        ({"type": "int3"}, "weight_type"),
        ({"granularity": "block"}, "needs --type int4"),
        ({"target": "micro", "granularity": "per-channel"}, "TFLM"),
        ({"mode": "dynamic", "type": "float16"}, "int8"),
        ({"exclude_tensors": "("}, "regular expression"),
        ({"include_ops": ["NOT_AN_OP"]}, "NOT_AN_OP"),
        ({"layout": "inline"}, "layout"),
        ({"min_elements": -1}, "min_elements"),
    ]:
        with pytest.raises(tflq.OptionError, match=match):
            tflq.quantize(fixtures / "mlp.tflite", tmp_path / "o.tflite", **kwargs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tflq.quantize(fixtures / "mlp.tflite", tmp_path / "o.tflite", min_elemnts=3)
    with pytest.raises(TypeError, match="both"):
        tflq.quantize(fixtures / "mlp.tflite", tmp_path / "o.tflite", type="int8", weight_type="int8")
    assert not (tmp_path / "o.tflite").exists()


def test_model_error_names_the_tensor(tmp_path):
    from ai_edge_litert import schema_py_generated as s
    import flatbuffers
    from conftest import fc_model

    path = fc_model(tmp_path / "fc.tflite", 64, 32)
    m = s.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    m.buffers[2].data = m.buffers[2].data[:-4]
    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    with pytest.raises(tflq.ModelError) as e:
        tflq.quantize(path, tmp_path / "o.tflite")
    assert str(path) in str(e.value) and '"fc/weights"' in str(e.value) and "8188 bytes" in str(e.value)


def test_docstrings_explain_every_option():
    doc = tflq.__doc__
    for name in ["min_elements", "mode", "granularity", "symmetric", "weight_type", "include_ops",
                 "exclude_ops", "exclude_tensors", "layout", "per-channel", "float16", "dynamic"]:
        assert name in doc, name
    import pydoc

    for f in [tflq.quantize, tflq.quantize_bytes, tflq.quantize_dir, tflq.report]:
        text = pydoc.render_doc(f)
        for name in ["min_elements", "mode", "granularity", "symmetric", "weight_type", "include_ops",
                     "exclude_ops", "exclude_tensors", "layout"]:
            assert name in text, (f.__name__, name)
    assert "in_place" in tflq.quantize.__doc__ and "jobs" in tflq.quantize_dir.__doc__
    assert "trials" in tflq.validate.__doc__
    stubs = Path(tflq.__file__).parent
    assert (stubs / "py.typed").is_file() and (stubs / "_tflq.pyi").is_file()
