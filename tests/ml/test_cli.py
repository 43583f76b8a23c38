"""The notetune CLI end to end in-process: JSON out, one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from cli.main import main


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, narrative_csv):
    out = tmp_path_factory.mktemp("cli") / "first"
    status = main(
        [
            "train",
            "--train",
            str(narrative_csv),
            "--base-model",
            tiny_bert,
            "--method",
            "lora",
            "--epochs",
            "1",
            "--max-length",
            "64",
            "--batch-size",
            "8",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    return out


def test_train_prints_the_manifest_and_second_inherits(capsys, trained, terse_csv, narrative_csv, tmp_path):
    capsys.readouterr()
    status, out, _ = run(
        capsys,
        "train",
        "--train",
        terse_csv,
        "--parent",
        trained,
        "--parent-train",
        narrative_csv,
        "--epochs",
        "1",
        "--max-length",
        "64",
        "--out",
        tmp_path / "second",
    )
    manifest = json.loads(out)
    assert status == 0
    assert (manifest["method"], manifest["stage"], manifest["parent_id"]) == ("lora", 2, trained.name)
    assert "forgetting_check" in manifest


def test_method_change_is_a_one_line_error(capsys, trained, terse_csv, tmp_path):
    status, out, err = run(
        capsys,
        "train",
        "--train",
        terse_csv,
        "--parent",
        trained,
        "--method",
        "full",
        "--out",
        tmp_path / "x",
    )
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "'lora'" in err and "'full'" in err and "Traceback" not in err


def test_bad_csv_is_a_one_line_error(capsys, tmp_path, tiny_bert):
    bad = tmp_path / "bad.csv"
    bad.write_text("Text,label\nsecret words,3\n")
    status, _, err = run(capsys, "train", "--train", bad, "--base-model", tiny_bert, "--out", tmp_path / "m")
    assert status == 2 and "row(s) 1" in err and "secret" not in err
    status, _, err = run(capsys, "train", "--train", tmp_path / "missing.csv", "--out", tmp_path / "m")
    assert status == 2 and err.startswith("notetune: error:")


def test_predict_and_evaluate_print_json(capsys, trained, terse_csv):
    status, out, _ = run(
        capsys, "predict", "--model", trained, "--base", "--text", "stage IV", "--text", "stage I"
    )
    result = json.loads(out)
    assert status == 0 and result["models"] == ["base", trained.name]
    assert [row["index"] for row in result["predictions"]] == [0, 1]
    assert set(result["predictions"][0]["base"]) == {"probability", "label", "threshold"}
    status, out, _ = run(
        capsys, "evaluate", "--test", terse_csv, "--model", trained, "--base", "--resamples", "50"
    )
    report = json.loads(out)
    assert status == 0 and [m["name"] for m in report["models"]] == ["base", trained.name]
    assert "roc_auc" in report["models"][1]["at_threshold"]


def test_train_states_the_verdict_and_evaluate_takes_a_stored_baseline(capsys, trained, terse_csv, tmp_path):
    from ml.baseline import load_baseline

    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["comparison"]["verdict"].startswith(("the fine-tuned", "the TF-IDF"))
    status, out, _ = run(
        capsys,
        "evaluate",
        "--test",
        terse_csv,
        "--model",
        trained,
        "--baseline",
        trained,
        "--resamples",
        "50",
    )
    report = json.loads(out)
    assert status == 0 and [m["name"] for m in report["models"]] == [trained.name, f"baseline:{trained.name}"]
    column = report["models"][1]
    assert (column["kind"], column["threshold"], column["threshold_source"]) == ("baseline", 0.5, "stored")
    assert column["model_id"] == manifest["id"]
    status, _, err = run(capsys, "evaluate", "--test", terse_csv, "--baseline", tmp_path)
    assert status == 2 and "no model at" in err
    (tmp_path / "manifest.json").write_text(json.dumps({"id": "old", "base_model": manifest["base_model"]}))
    status, _, err = run(capsys, "evaluate", "--test", terse_csv, "--baseline", tmp_path)
    assert status == 2 and "no stored baseline" in err
    assert load_baseline(trained).threshold == 0.5


def test_synth_writes_a_seeded_csv(capsys, tmp_path):
    status, out, _ = run(
        capsys, "synth", "--n", "50", "--style", "terse", "--seed", "3", "--out", tmp_path / "a.csv"
    )
    assert status == 0 and json.loads(out)["rows"] == 50
    run(capsys, "synth", "--n", "50", "--style", "terse", "--seed", "3", "--out", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    status, _, err = run(capsys, "synth", "--n", "5", "--style", "haiku", "--out", tmp_path / "c.csv")
    assert status == 2 and "haiku" in err


def test_pooling_and_head_start_flags_reach_the_manifest(capsys, tiny_bert, narrative_csv, tmp_path):
    flags = ["--epochs", "1", "--max-length", "64", "--batch-size", "8", "--quiet"]
    status, out, _ = run(
        capsys, "train", "--train", narrative_csv, "--base-model", tiny_bert, "--out", tmp_path / "m",
        "--pooling", "mean", "--head-init", "random", "--ema-decay", "0.9", *flags,
    )  # fmt: skip
    hyperparameters = json.loads(out)["hyperparameters"]
    assert status == 0
    assert (hyperparameters["pooling"], hyperparameters["head_init"], hyperparameters["ema_decay"]) == (
        "mean",
        "random",
        0.9,
    )
    status, _, err = run(
        capsys, "train", "--train", narrative_csv, "--pooling", "attention", "--out", tmp_path / "x"
    )
    assert status == 2 and "pooling must be one of" in err and "Traceback" not in err


def test_every_hyperparameter_is_a_train_flag_with_its_help(capsys):
    from ml.config import hyperparameter_fields

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for spec in hyperparameter_fields():
        assert "--" + spec.name.replace("_", "-") in out, spec.name
    assert "Notes per training step. (between 1 and 1024; default 16)" in out


def test_a_second_fine_tune_finds_the_parents_recorded_training_notes(capsys, trained, terse_csv, tmp_path):
    """The parent recorded where its notes were (and their sha256): --parent alone uses them."""
    capsys.readouterr()
    status, out, err = run(
        capsys, "train", "--train", terse_csv, "--parent", trained, "--epochs", "1", "--max-length", "64",
        "--out", tmp_path / "second",
    )  # fmt: skip
    manifest = json.loads(out)
    assert status == 0 and "using the parent's training notes" in err
    assert manifest["rehearsal"]["notes"] > 0 and "forgetting_check" in manifest


def test_a_second_fine_tune_says_loudly_when_the_parents_notes_are_gone(
    capsys, tiny_bert, narrative_csv, terse_csv, tmp_path
):
    notes = tmp_path / "first.csv"
    notes.write_bytes(narrative_csv.read_bytes())
    quick = ["--epochs", "1", "--max-length", "64", "--quiet"]
    assert main(["train", "--train", str(notes), "--base-model", tiny_bert, "--method", "lora", *quick,
                 "--out", str(tmp_path / "first")]) == 0  # fmt: skip
    notes.write_bytes(narrative_csv.read_bytes() + b"one more note,1\n")  # changed since
    capsys.readouterr()
    status, out, err = run(capsys, "train", "--train", terse_csv, "--parent", tmp_path / "first", *quick,
                           "--out", tmp_path / "changed")  # fmt: skip
    assert status == 0 and "WARNING" in err and "has changed" in err
    assert json.loads(out)["rehearsal"]["notes"] == 0
    notes.unlink()
    status, out, err = run(capsys, "train", "--train", terse_csv, "--parent", tmp_path / "first", *quick,
                           "--out", tmp_path / "gone")  # fmt: skip
    assert status == 0 and "WARNING" in err and "not there any more" in err
    assert "forgetting_check" not in json.loads(out)
