"""experiments/spirograph_gallery.py: the two grids it promises, as PNGs of the right size."""

import importlib.util
import pathlib

import matplotlib.image
import numpy as np

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "spirograph_gallery.py"
_spec = importlib.util.spec_from_file_location("spirograph_gallery", _PATH)
gallery = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gallery)


def test_main_writes_the_sample_and_view_grids(tmp_path, capsys):
  assert gallery.main(["--out", str(tmp_path), "--num", "16", "--views", "3"]) is None
  samples = matplotlib.image.imread(tmp_path / "samples.png")
  views = matplotlib.image.imread(tmp_path / "views.png")
  # 16 samples, 8 per row: 2 rows; 3 θ × 3 views: 3 rows of 3 (32 px tiles, 1 px padding).
  assert samples.shape[:2] == (2 * 33 + 1, 8 * 33 + 1)
  assert views.shape[:2] == (3 * 33 + 1, 3 * 33 + 1)
  assert np.std(samples) > 0 and np.std(views) > 0
  assert "samples.png" in capsys.readouterr().out
