"""The command line as an operator meets it (issue 18): --version, exit codes in --help, results on stdout and logs on
stderr with levels, --json events, progress, typed errors (exit 2) for every bad input before any data is loaded, a
one-line internal error (exit 1), and output folders that are never overwritten unasked."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import with_sections

import geofed_secure
from geofed_secure import terminal
from geofed_secure.cli import EXIT_CODES, _build_parser, main
from geofed_secure.terminal import ConsoleReporter, Terminal


class DataLoaded(BaseException):
    """Raised in place of loading the data: the command got past every check."""


def write_toml(config, path: Path) -> Path:
    data = config.to_dict()
    lines = []
    for section in ("federation", "model", "training", "data", "secure", "privacy"):
        lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in data[section].items()]
    for node in data["nodes"]:
        lines += ["[[nodes]]"] + [f"{k} = {json.dumps(v)}" for k, v in node.items() if v is not None]  # TOML has no null
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_toml(tiny_config, tmp_path):
    config = with_sections(tiny_config, federation={"rounds": 1}, data={"cache_dir": str(tmp_path / "cache")})
    return write_toml(config, tmp_path / "tiny.toml")


@pytest.fixture
def tiny_data(monkeypatch, tiny_modalities):
    def load(config, *, progress=None):
        for modality, data in tiny_modalities.items():
            if progress is not None:
                progress(modality, len(data.pool), len(data.pool))
        return dict(tiny_modalities)

    monkeypatch.setattr("geofed_secure.demo.load_demo_modalities", load)


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise DataLoaded()

    monkeypatch.setattr("geofed_secure.demo.load_demo_modalities", refuse)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith(f"geofed {geofed_secure.__version__}")


@pytest.mark.parametrize("argv", [[], ["run"], ["audit"]])
def test_help_documents_the_exit_codes(argv):
    parser = _build_parser()
    text = parser.format_help() if not argv else parser._subparsers._group_actions[0].choices[argv[0]].format_help()
    assert "exit codes:" in text and all(f"\n  {code} " in text for code in ("0", "1", "2", "130"))
    assert "exit codes:" in EXIT_CODES


def test_a_run_writes_its_result_to_stdout_and_its_logs_to_stderr(tiny_toml, tiny_data, tmp_path, capsys):
    assert main(["run", "--config", str(tiny_toml), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["command"] == "run" and result["status"] == "ok" and result["rounds"] == 1
    assert result["summary"] == str(tmp_path / "out" / "summary.json") and set(result["final"]) >= {"task_accuracy"}
    assert "round 1/1" in err and "done in" in err and "FutureWarning" not in err


def test_quiet_json_and_verbose(tiny_toml, tiny_data, tmp_path, capsys):
    assert main(["-q", "run", "--json", "--config", str(tiny_toml), "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert "round 1/1" not in err  # -q: warnings and errors only
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "result" and events[-1]["status"] == "ok"
    for kind in ("features", "round_started", "node_started", "node_step", "node_done", "round_done"):
        assert kind in kinds, kind
    steps = [e for e in events if e["event"] == "node_step" and e["node"] == "txt"]
    assert [e["step"] for e in steps] == [1, 2, 3] and steps[0]["steps"] == 3
    assert main(["run", "-v", "--config", str(tiny_toml), "--out", str(tmp_path / "b")]) == 0
    assert "txt training" in capsys.readouterr().err  # a debug line


def test_errors_before_any_data_are_typed_exit_2_and_json_on_stdout(tiny_toml, tiny_config, no_data, tmp_path, capsys):
    """Issue 18: --out that is a file (FileExistsError) or cannot be created (FileNotFoundError) gave tracebacks."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["run", "--json", "--config", str(tiny_toml), "--out", str(a_file)]) == 2
    out, err = capsys.readouterr()
    assert "OutputFolderError" in err and "not a folder" in err and "Traceback" not in err
    error = json.loads(out.splitlines()[-1])
    assert error == {"event": "error", "status": "error", "exit_code": 2, "error": "OutputFolderError",
                     "message": error["message"]} and str(a_file) in error["message"]
    assert main(["run", "--config", str(tiny_toml), "--out", str(a_file / "below")]) == 2
    assert "cannot create" in capsys.readouterr().err
    if Path("/proc/self").is_dir():
        assert main(["run", "--config", str(tiny_toml), "--out", "/proc/geofed-cannot-be-here"]) == 2
        assert "cannot create" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o500)
        assert main(["run", "--config", str(tiny_toml), "--out", str(locked / "out")]) == 2
    # configuration problems found before the data: the backbone, the target modules, the cache folder
    for key, value in (("backbone", str(tmp_path / "nowhere")), ("target_modules", ("qkv",))):
        bad = write_toml(with_sections(tiny_config, federation={"rounds": 1}, model={key: value}), tmp_path / f"{key}.toml")
        assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert f"model.{key}" in capsys.readouterr().err
    assert main(["run", "--config", str(tiny_toml), "--cache-dir", str(a_file / "cache"), "--out", str(tmp_path / "o")]) == 2
    assert "data.cache_dir" in capsys.readouterr().err
    with pytest.raises(DataLoaded):  # everything checked, the data is next
        main(["run", "--config", str(tiny_toml), "--out", str(tmp_path / "o")])


def test_resume_of_a_run_without_checkpoint_says_how_to_restart(tiny_toml, tiny_config, no_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(with_sections(tiny_config, federation={"rounds": 1}).to_dict()))
    assert main(["run", "--resume", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (run / "config.json").write_bytes(b"\x00\xffnot json")
    assert main(["run", "--resume", str(run)]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_resume_takes_cache_dir_and_refuses_overwrite(tiny_toml, tiny_data, tmp_path, capsys):
    """Issue 18: --resume DIR --cache-dir X was refused although the error text allowed --cache-dir."""
    out = tmp_path / "out"
    assert main(["run", "--config", str(tiny_toml), "--out", str(out)]) == 0
    assert main(["run", "--resume", str(out), "--cache-dir", str(tmp_path / "other-cache")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["resumed"] is True
    assert main(["run", "--resume", str(out), "--overwrite"]) == 2
    assert main(["run", "--config", str(tiny_toml), "--out", str(out)]) == 2  # a run is there
    assert "already holds a run" in capsys.readouterr().err
    assert main(["run", "--config", str(tiny_toml), "--out", str(out), "--overwrite"]) == 0


def test_an_internal_error_is_one_line_and_exit_1(tiny_toml, monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr("geofed_secure.demo.load_demo_modalities", broken)
    assert main(["run", "--config", str(tiny_toml), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "internal error (RuntimeError): something unforeseen" in err and "-v" in err and "Traceback" not in err
    assert main(["run", "-v", "--config", str(tiny_toml), "--out", str(tmp_path / "b")]) == 1
    assert "Traceback" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr("geofed_secure.demo.load_demo_modalities", interrupted)
    assert main(["run", "--config", str(tiny_toml), "--out", str(tmp_path / "c")]) == 130


def test_progress_bars_with_time_remaining_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    screen = io.StringIO()
    term = Terminal(stderr=screen, tty=True)
    reporter = ConsoleReporter(term, nodes=2, steps=4)
    with term.session(), term.live():
        reporter.features("image", 10, 10)
        reporter.round_started(1, 3)
        for step in range(1, 5):
            reporter.node_step("node-a", step, 4)
        reporter.node_done(1, "node-a", "trained")
    shown = screen.getvalue()
    assert "round 1: nodes" in shown and "node-a: local steps" in shown and "remaining" in shown
    plain = io.StringIO()
    term = Terminal(stderr=plain, tty=False)
    monkeypatch.setattr(terminal, "PLAIN_EVERY", 0.0)
    reporter = ConsoleReporter(term, nodes=2, steps=4)
    with term.session(), term.live():
        reporter.round_started(1, 3)
        for step in range(1, 5):
            reporter.node_step("node-a", step, 4)
    lines = plain.getvalue().splitlines()
    assert "round 1/3" in lines and "  node-a: local step 2/4" in lines and "\x1b" not in plain.getvalue()


def test_an_audit_never_replaces_a_report_without_overwrite(recorded_runs, tmp_path, capsys):
    (tmp_path / "plan.toml").write_text(f"protections = []\nepsilons = []\nrun = {json.dumps(str(recorded_runs['none']))}\n")
    args = ["audit", "--threat-model", "threat_models/hbc-server.toml", "--plan", str(tmp_path / "plan.toml"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["command"] == "audit" and result["report"] == str(tmp_path / "out" / "report.json")
    report = (tmp_path / "out" / "report.json").read_bytes()
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err
    assert (tmp_path / "out" / "report.json").read_bytes() == report
    assert main([*args, "--overwrite"]) == 0


def test_the_console_script_runs(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "geofed_secure.cli", "--version"], check=False, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.startswith("geofed ")


def test_resume_past_a_damaged_latest_pointer_falls_back_with_a_warning(tiny_toml, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--config", str(tiny_toml), "--out", str(out)]) == 0
    (out / "checkpoints" / "LATEST").write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert "warning: " in capsys.readouterr().err
