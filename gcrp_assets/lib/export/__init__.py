"""Exports of pipeline data for other programs: `sillytavern_folder` writes threads as a SillyTavern data folder."""
