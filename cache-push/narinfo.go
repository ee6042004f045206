package cachepush

import (
	"crypto/rand"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/cache-push/ingest"
)

// maxNarinfoSize bounds how much of an existing narinfo is read.
const maxNarinfoSize = 1 << 20

// newNarinfo describes out, stored as nar, signed by key. Every field
// comes from the verified Statement or from the bytes just ingested.
func newNarinfo(out attest.Output, deriver string, nar ingest.Result, key signature.SecretKey, ca string) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{
		StorePath:   out.Path,
		URL:         nar.URL,
		Compression: "zstd",
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, nar.FileHash[:], nixhash.NixBase32, true),
		FileSize:    nar.FileSize,
		NarHash:     nixhash.MustNewHashWithEncoding(nixhash.SHA256, nar.NarHash[:], nixhash.NixBase32, true),
		NarSize:     nar.NarSize,
		CA:          ca,
	}
	if deriver != "" {
		ni.Deriver = path.Base(deriver)
	}
	for _, r := range out.References {
		ni.References = append(ni.References, path.Base(r))
	}
	if err := ni.Check(); err != nil {
		return nil, fmt.Errorf("narinfo for %s: %w", out.Path, err)
	}
	sig, err := key.Sign(rand.Reader, ni.Fingerprint())
	if err != nil {
		return nil, fmt.Errorf("sign narinfo for %s: %w", out.Path, err)
	}
	ni.Signatures = append(ni.Signatures, sig)
	return ni, nil
}

// narHashOf returns the NarHash of a narinfo as raw bytes.
func narHashOf(ni *narinfo.NarInfo) ([32]byte, error) {
	var h [32]byte
	if ni.NarHash == nil || len(ni.NarHash.Digest()) != 32 {
		return h, fmt.Errorf("narinfo %s has no sha256 NarHash", ni.StorePath)
	}
	copy(h[:], ni.NarHash.Digest())
	return h, nil
}

// narinfoText is ni.String(), the same bytes, written into one buffer of
// about the right size instead of by a fmt.Fprintf per line into a
// growing one: the pusher prints a narinfo per entry. Like String, it
// needs a NarHash. A field added to go-nix's String must be added here
// (TestNarinfoText and FuzzNarinfo compare the two).
func narinfoText(ni *narinfo.NarInfo) string {
	var fileHash string
	withFile := ni.FileHash != nil && ni.FileSize != 0
	if withFile {
		fileHash = ni.FileHash.String()
	}
	narHash := ni.NarHash.String()
	n := 160 + len(ni.StorePath) + len(ni.URL) + len(ni.Compression) + len(fileHash) + len(narHash) +
		len(ni.Deriver) + len(ni.System) + len(ni.CA)
	for _, r := range ni.References {
		n += 1 + len(r)
	}
	for _, sig := range ni.Signatures {
		n += 8 + len(sig.Name) + 4*len(sig.Data)/3 + 4
	}
	var b strings.Builder
	b.Grow(n)
	line := func(key, value string) {
		b.WriteString(key)
		b.WriteString(value)
		b.WriteByte('\n')
	}
	line("StorePath: ", ni.StorePath)
	line("URL: ", ni.URL)
	line("Compression: ", ni.Compression)
	if withFile {
		line("FileHash: ", fileHash)
		b.WriteString("FileSize: ")
		b.WriteString(strconv.FormatUint(ni.FileSize, 10))
		b.WriteByte('\n')
	}
	line("NarHash: ", narHash)
	b.WriteString("NarSize: ")
	b.WriteString(strconv.FormatUint(ni.NarSize, 10))
	b.WriteByte('\n')
	b.WriteString("References:")
	if len(ni.References) == 0 {
		b.WriteByte(' ')
	}
	for _, r := range ni.References {
		b.WriteByte(' ')
		b.WriteString(r)
	}
	b.WriteByte('\n')
	if ni.Deriver != "" {
		line("Deriver: ", ni.Deriver)
	}
	if ni.System != "" {
		line("System: ", ni.System)
	}
	for _, sig := range ni.Signatures {
		line("Sig: ", sig.String())
	}
	if ni.CA != "" {
		line("CA: ", ni.CA)
	}
	return b.String()
}
