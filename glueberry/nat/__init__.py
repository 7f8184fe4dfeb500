"""NAT traversal: circuit relay v2, DCUtR, AutoNAT, UPnP and NAT-PMP."""
