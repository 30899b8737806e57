"""Model code living outside the gateway's packages, as a user's would: a family declared in
its own module (``reverse``) and ``family: custom`` backends named by import path
(``custom_backends``). Tests serve them without editing any gateway module."""
