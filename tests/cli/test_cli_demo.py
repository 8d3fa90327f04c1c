"""`biounet demo --quick`: the whole job runs and leaves a report with finite metrics."""

import json
import math

from biounet.cli import main


def test_quick_demo_writes_report_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("rand_error", "pixel_error", "seg", "ap_50", "megapixels_per_s", "total_s"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["rand_error"] <= 1 and 0 <= metrics["seg"] <= 1
    assert metrics["n_true_objects"] > 10
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5  # input, prediction, crops, weight map
    assert "Metrics on the large image" in page
    assert (out / "train" / "best.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "report:" in printed and "Rand error" in printed
