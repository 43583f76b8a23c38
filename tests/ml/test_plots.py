import struct

import numpy as np
import pytest

from ml.plots import PLOT_KINDS, plot_png
from ml.report import ModelOutput

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def _outputs(n: int = 120, models: int = 3):
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.35).astype(int)
    outputs = [
        ModelOutput(
            "base" if k == 0 else f"model {k} with a rather long display name",
            None,
            1 / (1 + np.exp(-(rng.normal(0, 1, n) + (0.5 + k) * (2 * labels - 1)))),
            0.4 + 0.05 * k,
        )
        for k in range(models)
    ]
    return labels, outputs


@pytest.mark.parametrize("kind", PLOT_KINDS)
@pytest.mark.parametrize(("width", "height"), [(900, 700), (641, 479)])
def test_plot_is_png_of_requested_size(kind, width, height):
    labels, outputs = _outputs()
    png = plot_png(kind, labels, outputs, width_px=width, height_px=height)
    assert _png_size(png) == (width, height)


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_plots_handle_one_class_and_eight_models(kind):
    labels, outputs = _outputs(n=60, models=8)
    assert _png_size(plot_png(kind, labels, outputs)) == (900, 700)
    assert _png_size(plot_png(kind, np.zeros(60, dtype=int), outputs[:2])) == (900, 700)


def test_same_input_gives_same_png():
    labels, outputs = _outputs()
    assert plot_png("roc", labels, outputs) == plot_png("roc", labels, outputs)


def test_unknown_kind_and_bad_inputs_raise():
    labels, outputs = _outputs()
    with pytest.raises(ValueError, match="unknown plot kind"):
        plot_png("histogram", labels, outputs)
    with pytest.raises(ValueError):
        plot_png("roc", labels, [])
    with pytest.raises(ValueError):
        plot_png("roc", labels[:-1], outputs)
    with pytest.raises(ValueError):
        plot_png("roc", labels, outputs, width_px=10)
