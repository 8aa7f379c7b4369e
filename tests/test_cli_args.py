"""The command line refuses bad flags and output paths by name before any work starts
(minifcn.cliargs), two trainings cannot share an --out (minifcn.runlock), every flag has
help, and a mistake is one line `minifcn VERB: error: ...` while a bug keeps its traceback."""
import argparse
import json
import os
import socket
import subprocess
import sys

import pytest

from minifcn import cli, cliargs
from minifcn.runlock import NAME, LockHeld, RunLock


@pytest.fixture
def no_work(monkeypatch):
    """Any dataset read, net built or bench run fails the test: refusals come before them."""
    def work(*args, **kw):
        raise AssertionError("work started")
    for name in ("load_dataset", "build_model", "load_weights"):
        monkeypatch.setattr(cli, name, work)
    from minifcn.bench import command
    monkeypatch.setattr(command, "run", work)


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


BAD_FLAGS = [  # (argv, the flag the message names); each refused by argparse, exit 2
    (["train", "--lr", "nan"], "--lr"), (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "inf"], "--lr"), (["train", "--lr", "0"], "--lr"),
    (["train", "--momentum", "1"], "--momentum"), (["train", "--momentum", "-0.1"], "--momentum"),
    (["train", "--momentum", "nan"], "--momentum"),
    (["train", "--weight-decay", "-0.0001"], "--weight-decay"),
    (["train", "--weight-decay", "inf"], "--weight-decay"),
    (["train", "--gamma", "0"], "--gamma"), (["train", "--gamma", "nan"], "--gamma"),
    (["train", "--power", "-1"], "--power"), (["train", "--power", "inf"], "--power"),
    (["train", "--stepsize", "0"], "--stepsize"), (["train", "--stepsize", "1.5"], "--stepsize"),
    (["train", "--class-weights", "1", "nan"], "--class-weights"),
    (["train", "--class-weights", "1", "-1"], "--class-weights"),
    (["train", "--minutes", "0"], "--minutes"), (["train", "--minutes", "inf"], "--minutes"),
    (["train", "--seed", "-1"], "--seed"), (["train", "--seed", str(2 ** 32)], "--seed"),
    (["train", "--seed", "1.5"], "--seed"),
    (["train", "--iters", "0"], "--iters"), (["train", "--batch", "-2"], "--batch"),
    (["train", "--crop", "32", "0"], "--crop"), (["train", "--iter-size", "0"], "--iter-size"),
    (["train", "--bucket-mb", "nan"], "--bucket-mb"),
    (["train", "--loss-sample", "0"], "--loss-sample"),
    (["train", "--loss-sample", "1.5"], "--loss-sample"),
    (["train", "--val-interval", "0"], "--val-interval"),
    (["train", "--checkpoint-interval", "-1"], "--checkpoint-interval"),
    (["train", "--synthetic-size", "0"], "--synthetic-size"),
    (["train", "--num-classes", "0"], "--num-classes"),
    (["train", "--num-classes", "70000"], "--num-classes"),
    (["train", "--max-channels", "0"], "--max-channels"),
    (["eval", "--weights", "w.npz", "--n-overlays", "0"], "--n-overlays"),
    (["eval", "--weights", "w.npz", "--num-classes", "1e9"], "--num-classes"),
    (["predict", "--weights", "w.npz", "--mean", "1", "nan", "3", "x.png"], "--mean"),
    (["rf", "fcn8s", "--size", "0", "500"], "--size"),
    (["rf", "fcn8s", "--size", "-5", "5"], "--size"),
    (["rf", "fcn8s", "--num-classes", "65536"], "--num-classes"),
    (["convert", "a.npz", "b.npz", "--model", "fcn8s", "--num-classes", "-3"], "--num-classes"),
    (["bench", "--repeat", "0"], "--repeat"), (["bench", "--rounds", "-1"], "--rounds"),
    (["bench", "--threads", "0"], "--threads"), (["bench", "--threads", "two"], "--threads"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_number_is_refused_by_name_before_work(argv, flag, no_work, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"minifcn {argv[0]}: error: argument {flag}:"), err
    assert "got " in err or "not an integer" in err or "not a number" in err, err


def test_the_types_accept_good_values():
    p = cli.make_parser()
    a = p.parse_args(["train", "--lr", "1e-10", "--momentum", "0", "--weight-decay", "0",
                      "--seed", str(2 ** 32 - 1), "--num-classes", "65535",
                      "--class-weights", "0", "2.5", "--loss-sample", "1"])
    assert (a.lr, a.momentum, a.weight_decay, a.seed) == (1e-10, 0.0, 0.0, 2 ** 32 - 1)
    assert a.num_classes == cliargs.MAX_CLASSES and a.class_weights == [0.0, 2.5]


@pytest.mark.parametrize("weights,words", [(["1", "2"], "has 2 values for 5 classes"),
                                           (["0"] * 5, "all zero")])
def test_class_weights_must_fit_the_classes(weights, words, no_work, capsys):
    code, _, err = run(["train", "--class-weights", *weights], capsys)   # synthetic: 5
    assert code == 2 and words in err and err.startswith("minifcn train: error: --class-")
    code, _, err = run(["train", "--data", "/no/voc", "--num-classes", "3",
                        "--class-weights", "1", "1"], capsys)
    assert code == 2 and "2 values for 3 classes" in err


def test_a_score_blob_larger_than_memory_is_refused(monkeypatch, no_work, capsys):
    monkeypatch.setattr(cliargs, "memory_bytes", lambda: 2 ** 30)           # 1 GiB
    argv = ["train", "--num-classes", "1000", "--batch", "2", "--crop", "300", "300"]
    code, _, err = run(argv, capsys)                    # 3 * 4 B * 1000 * 2 * 300 * 300: 2 GiB
    assert code == 2 and "--num-classes 1000" in err and "2.0 GiB" in err, err
    a = cli.make_parser().parse_args(argv[:3] + ["--batch", "1", "--crop", "300", "200"])
    cli._check_args(a)                                                   # 0.67 GiB: fits


# ----------------------------------------------------------------------------- output paths
def test_output_paths_are_checked_before_work(tmp_path, no_work, capsys):
    a_file, a_dir = tmp_path / "file.txt", tmp_path / "dir"
    a_file.write_text("x")
    a_dir.mkdir()
    cases = [(["train", "--out", str(a_file)], "--out", "is a file, not a folder"),
             (["train", "--out", str(a_file / "sub")], "--out", "is a file, not a folder"),
             (["eval", "--weights", "w.npz", "--overlays", str(a_file)], "--overlays", "a file"),
             (["predict", "--weights", "w.npz", "--out", str(a_file), "x.png"], "--out", "a file"),
             (["bench", "--json", str(a_dir)], "--json", "is a folder, not a file"),
             (["bench", "--markdown", str(a_file / "r.md")], "--markdown", "not a folder"),
             (["convert", "a.npz", str(a_dir), "--model", "fcn8s"], "output", "a folder")]
    for argv, flag, words in cases:
        code, _, err = run(argv, capsys)
        assert code == 2 and f"argument {flag}: " in err and words in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == ["dir", "file.txt"]          # nothing written


def test_output_paths_that_can_be_made_are_accepted_and_not_made(tmp_path):
    deep = tmp_path / "a" / "b"
    a = cli.make_parser().parse_args(["train", "--out", str(deep)])
    assert a.out == str(deep) and not (tmp_path / "a").exists()
    assert cliargs.out_file(str(deep / "r.json")) == str(deep / "r.json")
    with pytest.raises(argparse.ArgumentTypeError, match="empty"):
        cliargs.out_dir("")
    assert cliargs.nonneg_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        cliargs.nonneg_int("-1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    for check, path in ((cliargs.out_dir, ro), (cliargs.out_dir, ro / "new"),
                        (cliargs.out_file, ro / "x.json")):
        with pytest.raises(argparse.ArgumentTypeError, match="not writable"):
            check(str(path))


# ----------------------------------------------------------------------------- help
def _parsers():
    p = cli.make_parser()
    yield "minifcn", p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                yield f"minifcn {verb}", sub
    from minifcn import demo
    if hasattr(demo, "make_parser"):
        yield "minifcn.demo", demo.make_parser()


def test_every_flag_has_help():
    missing, seen = [], 0
    for prog, p in _parsers():
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or \
                    action.help == argparse.SUPPRESS:
                continue
            seen += 1
            if not (action.help or "").strip():
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"flags without help: {', '.join(missing)}"
    assert seen > 60


# ----------------------------------------------------------------------------- the train lock
def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_lock_refuses_a_second_run_and_goes_on_release(tmp_path):
    with RunLock(tmp_path) as first:
        info = json.loads((tmp_path / NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(LockHeld) as e:
            RunLock(tmp_path).acquire()
        assert str(tmp_path / NAME) in str(e.value) and f"pid {os.getpid()}" in str(e.value)
        assert first.held
    assert not (tmp_path / NAME).exists()
    RunLock(tmp_path).acquire().release()                 # free again


def test_a_stale_lock_is_taken_over_and_another_hosts_refused(tmp_path):
    lock = tmp_path / NAME
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="no longer running"):
        with RunLock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists() and not (tmp_path / f"{NAME}.takeover").exists()
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example"}))
    with pytest.raises(LockHeld, match="on host elsewhere.example"):
        RunLock(tmp_path).acquire()
    lock.write_text("")                                    # being written, or damaged
    with pytest.raises(LockHeld, match="cannot be read"):
        RunLock(tmp_path).acquire()
    assert lock.exists()                                   # never removed: not ours


def test_a_refused_lock_leaves_no_folder_behind(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / NAME).write_text(json.dumps({"pid": os.getppid(),
                                                   "host": socket.gethostname()}))
    lock = RunLock(tmp_path / "new")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "new").exists()                 # made for the lock, removed again


def test_train_on_a_locked_out_is_one_line_before_work(tmp_path, no_work, capsys):
    (tmp_path / NAME).write_text(json.dumps({"pid": os.getppid(),       # alive: our parent
                                             "host": socket.gethostname()}))
    code, out, err = run(["train", "--out", str(tmp_path)], capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("minifcn train: error: ") and str(tmp_path / NAME) in err
    assert f"pid {os.getppid()}" in err


def test_train_releases_the_lock_on_error(tmp_path, monkeypatch, capsys):
    seen = []

    def failing_setup(a, comm):
        seen.append((tmp_path / "run" / NAME).exists())
        raise ValueError("set-up failed")
    monkeypatch.setattr(cli, "_train_setup", failing_setup)
    code, _, err = run(["train", "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "set-up failed" in err and seen == [True]
    assert not (tmp_path / "run").exists()                 # the lock and its folder: gone


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch, capsys):
    class Comm:                               # rank 1 of 2, agreeing on everything
        rank, size = 1, 2

        def allgather_text(self, text):
            return [text, text]
    seen = []

    def setup(a, comm):
        seen.append(os.path.exists(tmp_path / NAME))
        raise ValueError("stop here")
    monkeypatch.setattr(cli, "_world", lambda a: Comm())
    monkeypatch.setattr(cli, "_train_setup", setup)
    assert cli.main(["train", "--out", str(tmp_path)]) == 1          # Quiet on rank 1
    assert seen == [False]


# ----------------------------------------------------------------------------- error lines
def test_bad_input_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    code, _, err = run(["eval", "--weights", str(tmp_path / "none.npz")], capsys)
    assert code == 1 and err.startswith("minifcn eval: error: ") and err.count("\n") == 1
    assert "Traceback" not in err

    def bug(*args, **kw):
        raise KeyError("a bug")
    monkeypatch.setattr(cli, "build_model", bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["rf", "fcn8s"])


def test_the_verb_in_the_error_line():
    assert cli._verb(["--device", "cpu"]) == "minifcn"
    assert cli._verb(["predict", "--out", "x"]) == "minifcn predict"
    assert cli._verb(["nope"]) == "minifcn"


@pytest.mark.parametrize("argv,flag", [(["--n-overlays", "-1"], "--n-overlays"),
                                       (["--batch", "0"], "--batch"),
                                       (["--steps", "nan"], "--steps")])
def test_the_demo_refuses_a_bad_number_by_name(argv, flag, capsys):
    from minifcn import demo
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2 and f"argument {flag}: " in capsys.readouterr().err
