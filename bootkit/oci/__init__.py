"""Images from OCI container registries and layouts: references, manifests, trust
policies, skopeo, and the one image layout bootkit keeps. Nothing here knows a sysroot."""
