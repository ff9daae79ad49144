"""People's operations on the to-do list: send, ignore, mark as sent, listing, recovery."""
