"""Training data: LeRobot datasets, openpi-semantics transforms, norm stats, data configs, batch loader.

- `lerobot`: read LeRobot v2.0 / v2.1 / v3.0 datasets (parquet + optional mp4 videos), local or
  from the Hub; `lerobot_writer`: write v2.1 or v3.0 ones; `hub`: fetch Hub dataset files.
- `transforms`: small pure functions (repack, delta actions, normalise, resize-with-pad, tokenise,
  pad) with openpi's semantics, plus the robot input/output adapters.
- `normalize`: `NormStats`, streaming statistics (running moments + histograms), norm_stats.json I/O.
- `configs`: named frozen `DataConfig`s (pi0_libero, pi05_libero, ...) and `make_transforms`.
- `loader`: a threaded, prefetching, resumable batch loader that puts batches on devices; on a
  multi-host job each process reads only its rows of every global batch.
"""
