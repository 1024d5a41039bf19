"""Training data: LeRobot datasets, openpi-semantics transforms, norm stats, data configs, batch loader.

- `lerobot`: read LeRobot v2.x datasets (parquet + optional mp4 videos) and write new ones.
- `transforms`: small pure functions (repack, delta actions, normalise, resize-with-pad, tokenise,
  pad) with openpi's semantics, plus the robot input/output adapters.
- `normalize`: `NormStats`, streaming statistics (running moments + histograms), norm_stats.json I/O.
- `configs`: named frozen `DataConfig`s (pi0_libero, pi05_libero, ...) and `make_transforms`.
- `loader`: a threaded, prefetching, resumable batch loader that puts batches on devices.
"""
