"""Serving π0 / π0.5 policies on the host.

Owns the host-side `Policy` (`policy.py`: checkpoint + configs + norm stats + tokenizer -> jitted
`infer(obs) -> {"actions", "policy_timing"}`), shared by evaluation and serving, and the websocket
server that speaks openpi's protocol so `openpi_client.WebsocketClientPolicy` works unchanged
(`server.py`; entry point `python -m pirl.serve`).
"""
