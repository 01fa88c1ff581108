"""The gRPC edge: servicers (proto <-> domain only), interceptors, the error table."""
