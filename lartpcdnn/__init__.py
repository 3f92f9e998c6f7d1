"""lartpcdnn: experiment package on dlkit."""
