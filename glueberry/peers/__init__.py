"""The Glueberry application layer: address book, peer states, reconnection, channels."""
