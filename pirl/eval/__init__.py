"""Policy evaluation on the real LIBERO benchmark and on pirl's MJX suites.

Owns the runners (`libero.evaluate_libero`: parallel LIBERO worker processes queried by a batched
host `Policy`; `mjx.evaluate_mjx`: every episode in parallel on device), the results files and
resume logic (`report`), and the command line `python -m pirl.eval` (`__main__`).
"""
