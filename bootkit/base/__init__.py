"""The ground floor: durable file writes, extended attributes, file types and
running programs. It imports nothing of bootkit but its errors."""
