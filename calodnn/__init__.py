"""calodnn: experiment package on dlkit."""
