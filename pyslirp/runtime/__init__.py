"""The threaded shell around the sans-IO core: serial reader/writer, the stack
thread with its timer heap, and one thread per outbound service connection."""
