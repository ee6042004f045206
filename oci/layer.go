package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
)

// layerVersion is the version of the tar encoding and of the layer
// record. A record of another version is recomputed: a change of the tar
// encoding changes every digest, and a stale record would promise a digest
// the blob no longer has.
const layerVersion = 1

// maxRecordSize bounds how much of a layer record or tag is read.
const maxRecordSize = 64 << 10

// layerTime is every entry's mtime: Nix's own store mtime (1), so that a
// layer depends on nothing but the NAR.
var layerTime = time.Unix(1, 0)

// Layer record: what is computed once per store path from its NAR and
// kept in the store (cachelayout.OCILayerKey), so manifests are served
// without reading NARs.
type layerRecord struct {
	Version   int    `json:"version"`
	StorePath string `json:"storePath"`
	// NarHash is the narinfo's NarHash the layer was made from; a record
	// whose NarHash differs from the narinfo's is stale.
	NarHash string `json:"narHash"`
	Digest  string `json:"digest"` // sha256:<hex> of the tar
	Size    int64  `json:"size"`
	// Programs are the names in the path's bin/ that an image could run:
	// executable files and symlinks.
	Programs []string `json:"programs,omitempty"`
}

// valid reports whether r is a usable record for ni.
func (r *layerRecord) valid(ni *narinfo.NarInfo) bool {
	return r.Version == layerVersion && r.StorePath == ni.StorePath && r.NarHash == ni.NarHash.String() &&
		validDigest(r.Digest) && r.Size > 0
}

func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	b, err := hex.DecodeString(h)
	return ok && err == nil && len(b) == sha256.Size && strings.ToLower(h) == h
}

// errLayer marks a NAR that cannot become a layer.
var errLayer = errors.New("oci: layer")

// writeLayer writes the deterministic tar layer of the store path of ni,
// read from its NAR in st, to w, and returns the programs of its bin/.
// The NAR is checked against ni's NarSize as it streams, and with
// checkHash against its NarHash too (the last read fails on a mismatch),
// so a layer digest is never recorded for bytes the narinfo does not
// describe. Serving skips the hash: the bytes served must hash to the
// recorded layer digest, which every client checks, so a NAR altered
// since fails there, at no cost to the server.
func writeLayer(ctx context.Context, st store.Store, ni *narinfo.NarInfo, w io.Writer, checkHash bool) ([]string, error) {
	if !strings.HasPrefix(ni.URL, cachelayout.NARPrefix) || store.ValidKey(ni.URL) != nil {
		return nil, fmt.Errorf("%w: narinfo of %s: NAR URL %q is not in the cache", errLayer, ni.StorePath, ni.URL)
	}
	body, err := st.Open(ctx, ni.URL)
	if err != nil {
		return nil, fmt.Errorf("open NAR of %s: %w", ni.StorePath, err)
	}
	decode := cacheclient.DecodeNAR
	if !checkHash {
		decode = cacheclient.DecodeNARUnsafe
	}
	narStream, err := decode(ni.URL, body, ni)
	if err != nil {
		return nil, err
	}
	defer narStream.Close()
	nr, err := nar.NewReader(narStream)
	if err != nil {
		return nil, fmt.Errorf("%w: NAR of %s: %w", errLayer, ni.StorePath, err)
	}
	defer nr.Close()
	tw := tar.NewWriter(w)
	root := strings.TrimPrefix(ni.StorePath, "/")
	for _, dir := range []string{"nix/", "nix/store/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: layerTime}); err != nil {
			return nil, err
		}
	}
	var programs []string
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: NAR of %s: %w", errLayer, ni.StorePath, err)
		}
		name := root + h.Path
		if h.Path == "/" {
			name = root
		}
		hdr := &tar.Header{Name: name, ModTime: layerTime}
		switch h.Type {
		case nar.TypeDirectory:
			hdr.Typeflag, hdr.Mode, hdr.Name = tar.TypeDir, 0o555, name+"/"
		case nar.TypeSymlink:
			hdr.Typeflag, hdr.Mode, hdr.Linkname = tar.TypeSymlink, 0o777, h.LinkTarget
		case nar.TypeRegular:
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o444, h.Size
			if h.Executable {
				hdr.Mode = 0o555
			}
		default:
			return nil, fmt.Errorf("%w: NAR of %s: entry %s of type %q", errLayer, ni.StorePath, h.Path, h.Type)
		}
		if dir, file := path.Split(h.Path); dir == "/bin/" && (h.Type == nar.TypeSymlink || h.Type == nar.TypeRegular && h.Executable) {
			programs = append(programs, file)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer of %s: %w", ni.StorePath, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.CopyN(tw, nr, h.Size); err != nil {
				return nil, fmt.Errorf("layer of %s: %w", ni.StorePath, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer of %s: %w", ni.StorePath, err)
	}
	// Read the NAR to its end: only there does the stream compare it with
	// the narinfo.
	if _, err := io.Copy(io.Discard, narStream); err != nil {
		return nil, fmt.Errorf("NAR of %s: %w", ni.StorePath, err)
	}
	return programs, nil
}

// computeLayer makes the layer record of ni by writing its layer to a
// hash.
func computeLayer(ctx context.Context, st store.Store, ni *narinfo.NarInfo) (*layerRecord, error) {
	h := sha256.New()
	cw := &countWriter{w: h}
	programs, err := writeLayer(ctx, st, ni, cw, true)
	if err != nil {
		return nil, err
	}
	return &layerRecord{
		Version: layerVersion, StorePath: ni.StorePath, NarHash: ni.NarHash.String(),
		Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: cw.n, Programs: programs,
	}, nil
}

// layerKey names the layer of ni's NAR in Registry.computed.
func layerKey(ni *narinfo.NarInfo) string { return ni.StorePath + " " + ni.NarHash.String() }

// checkLayers makes sure every layer digest of img is what its NAR
// makes: the records the manifest was built from are read from the store,
// and whoever can write there must not get the registry's signature on a
// digest of another tar (it would vouch for that image wherever it is
// copied). Layers this process computed are not computed again.
func (r *Registry) checkLayers(ctx context.Context, img *image) error {
	for _, l := range img.layers {
		want := l.desc.Digest.String()
		if d, ok := r.computed.Load(layerKey(l.ni)); ok && d == want {
			continue
		}
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		rec, err := computeLayer(ctx, r.st, l.ni)
		<-r.sem
		if err != nil {
			return fmt.Errorf("%w: layer of %s: %w", ErrNoSummary, l.ni.StorePath, err)
		}
		r.computed.Store(layerKey(l.ni), rec.Digest)
		if rec.Digest != want {
			return fmt.Errorf("%w: the layer record of %s names %s, but its NAR makes %s", ErrNoSummary, l.ni.StorePath, want, rec.Digest)
		}
	}
	return nil
}

// readLayerRecord returns the stored record of ni, or nil when there is
// none or it is stale.
func readLayerRecord(ctx context.Context, st store.Store, ni *narinfo.NarInfo) (*layerRecord, error) {
	b, err := store.ReadAll(ctx, st, cachelayout.OCILayerKey(ni.StorePath), maxRecordSize)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r layerRecord
	if json.Unmarshal(b, &r) != nil || !r.valid(ni) {
		return nil, nil
	}
	return &r, nil
}

func writeRecord(ctx context.Context, st store.Store, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return store.Put(ctx, st, key, bytes.NewReader(b))
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
