"""`pipeline.py demo` end to end on a tiny configuration."""

import json

import pytest

from demo.run import DemoConfig, run_demo


@pytest.mark.slow  # the whole demo: every stage
def test_tiny_demo_runs_every_stage_and_writes_its_table(tmp_path, capsys):
    cfg = DemoConfig(out_dir=str(tmp_path / "demo"), num_train=8, num_val=3, num_test=3, pretrain_epochs=1,
                     train_epochs=2, warmup_epochs=1, embed_dim=16, word_dim=8, batch_size=8,
                     finetune_steps=1, finetune_batch_size=4, workers=0)
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    for artifact in ("data/dataset_demo.json", "demo_resnet18.pth", "features.h5", "train/best.pt",
                     "finetune/best.pt", "eval-train.json", "eval-finetune.json", "demo_results.md"):
        assert (out / artifact).is_file(), artifact
    assert set(summary["recall"]) == {"train", "finetune"}
    table = (out / "demo_results.md").read_text()
    assert "| train |" in table and "| finetune |" in table
    chance = summary["recall"]["train"]["chance"]  # eval's chance level of the test split, in the table's last row
    assert table.splitlines()[-1] == "| chance | " + " | ".join(f"{chance[key]:.1f}" for key in (
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")) + " |"
    assert json.loads((out / "demo.config.json").read_text())["num_test"] == 3
    printed = capsys.readouterr().out
    assert "Recall@K on the 3 test images" in printed
    for stage in ("train", "finetune"):  # the demo ends with each run's report, its path printed
        index = out / stage / "report" / "index.html"
        assert index.is_file() and f"report: {index}" in printed and str(index) in summary["reports"]
