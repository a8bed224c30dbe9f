-- Whether the identity provider checked the user's email (`email_verified`).
-- Operators may name a user by email only when it is verified: anyone can put
-- an unchecked email in their own profile.
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
