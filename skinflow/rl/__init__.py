"""Stage I / Stage II reinforcement learning: reward functions (``rewards``) and the GRPO runner (``grpo``)."""
