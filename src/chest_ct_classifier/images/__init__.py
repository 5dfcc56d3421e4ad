"""Images, knowing nothing of models: the labels, where images come from (folders, archives,
URLs), the one preprocessing function, augmentation, duplicate detection and splitting."""
