"""SLO autoscaling: replica signals (`signals`), what replicas report (`report`), the pure
decision over a snapshot of every pool (`decision`), and Ray Serve's policy around it
(`policy`)."""
