"""The webhook sender stage: signed POSTs of finished jobs to their callback_url."""
