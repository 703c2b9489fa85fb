"""Privacy audit (threat models, views, attacks): issue 5. Nothing here yet."""
