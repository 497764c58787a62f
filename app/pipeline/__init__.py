"""Operations and the one pipeline both front doors hand them to, and the rewrite of fal's answer."""
