"""clustercount: experiment package on dlkit."""
