package queue

import (
	"crypto/sha256"
	"encoding/hex"
)

// ForgeStatusPrefix is the key prefix, in BucketWaiting, of the records
// of verdicts per commit (cache-push/forgestatus).
const ForgeStatusPrefix = "forge"

// ForgeStatusKey is where the verdicts on the paths that one commit of
// one repository on one forge built for one system are kept: a digest,
// as those names may hold characters keys cannot.
func ForgeStatusKey(forgeURL, repo, sha, system string) string {
	sum := sha256.Sum256([]byte(forgeURL + "\x00" + repo + "\x00" + sha + "\x00" + system))
	return ForgeStatusPrefix + "." + hex.EncodeToString(sum[:16])
}
