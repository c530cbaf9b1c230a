"""The content-addressed store: objects, refs, revisions, fsck and gc."""
