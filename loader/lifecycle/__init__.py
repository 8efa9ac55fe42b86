"""A batch after its saves: repairs of its rejects (``repair``), the results re-OCR
replaced (``history``), what an operator lists (``batches``), and its end
(``delete``: deleting a batch, retention)."""
