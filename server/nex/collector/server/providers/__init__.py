"""Teacher model providers: one interface (`base.TeacherProvider`), one file each."""
