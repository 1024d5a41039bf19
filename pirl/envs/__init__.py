"""On-device MJX manipulation environments: scenes, controller, renderer, tasks, experts."""
