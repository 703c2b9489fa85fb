"""Node logic: local training with task + geometric loss, and the upload it builds."""
