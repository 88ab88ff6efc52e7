"""What any process that uses an open database runs: the arena readers
(reader.pyx), the ring producer (writer.pyx), and the attachment they share
(attachment.pyx: mappings, lifecycle, reader registration). See
docs/ARCHITECTURE.md."""
