"""End-to-end tests: the whole stack as processes, the closed loop, dashboards and traces."""
