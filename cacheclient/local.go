package cacheclient

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"

	"codeberg.org/provenix/provenix/nix"
)

// Local is a store path at hand rather than in a cache: either a NAR file
// said to hold StorePath, or StorePath itself in a local store.
type Local struct {
	StorePath string
	// NARFile, when set, is the NAR serialisation to check; otherwise
	// StorePath is read (and serialised) from the store.
	NARFile string
	// StoreRoot is the root of a chroot store holding StorePath; "" is /.
	StoreRoot string
}

// VerifyLocal checks bundles against l's NAR digest and o's trusted
// builders, counting o.Quorum distinct builders, as Verify does for a cache
// entry (there is no narinfo, so references are not compared). A verdict,
// verified or not, is a Report with a nil error; an error means the NAR
// could not be read.
func VerifyLocal(l Local, bundles [][]byte, o VerifyOptions) (*Report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	rep := &Report{StorePath: l.StorePath}
	var d NARDigest
	if l.NARFile != "" {
		rep.From = l.NARFile
		f, err := os.Open(l.NARFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if d, err = hashStream(f); err != nil {
			return nil, fmt.Errorf("read %s: %w", l.NARFile, err)
		}
	} else {
		rep.From = "local store"
		real := l.StorePath
		if l.StoreRoot != "" {
			real = path.Join(l.StoreRoot, l.StorePath)
		}
		var err error
		if d.SHA256, d.Size, err = nix.HashNAR(real); err != nil {
			return nil, fmt.Errorf("read %s: %w", l.StorePath, err)
		}
	}
	rep.NarSHA256, rep.NarSize = hex.EncodeToString(d.SHA256[:]), d.Size
	AssessBundles(rep, bundles, o)
	return rep, nil
}

// hashStream returns the sha256 and length of what r yields.
func hashStream(r io.Reader) (NARDigest, error) {
	var d NARDigest
	h := sha256.New()
	n, err := io.Copy(h, r)
	copy(d.SHA256[:], h.Sum(nil))
	d.Size = uint64(n)
	return d, err
}
