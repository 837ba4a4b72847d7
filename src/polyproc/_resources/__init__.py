"""Resources shared between processes: fd passing, named-resource tracking."""
