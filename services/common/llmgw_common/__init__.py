"""Code every service shares: JSON logging and the gRPC server shell."""
