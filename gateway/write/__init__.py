"""The one write path's gate (``admit``: ``check`` then ``admit``) and strict R4 validation
(``validate``): below the store, which accepts only what ``admit`` makes."""
