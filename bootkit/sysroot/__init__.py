"""The physical root: deployments side by side, the content store they share,
importing trees, /etc and /var, and the transaction that switches boot state."""
