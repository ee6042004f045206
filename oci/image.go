package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cacheclient"
	"codeberg.org/provenix/provenix/cachelayout"
)

// image is the OCI image of a store path's closure: what the routes serve.
// It is immutable once built.
type image struct {
	root       string // the store path the image runs
	entrypoint []string
	manifest   []byte
	digest     v1.Hash
	config     []byte
	configDesc v1.Descriptor
	layers     []layer
	// narinfoStat is the root narinfo's Info when the image was built: a
	// cached image is reused only while the narinfo is unchanged, and for
	// imageTTL at most (a dependency's narinfo is not checked).
	narinfoStat store.Info
	built       time.Time
}

// imageTTL is how long a built image is served from memory: as long as
// clients may cache a narinfo.
const imageTTL = time.Minute

// layer is one store path of the closure as a layer.
type layer struct {
	desc v1.Descriptor
	ni   *narinfo.NarInfo
}

// imageCreated is the images' creation time: fixed, so an image depends on
// its closure only (Nix's dockerTools does the same).
var imageCreated = v1.Time{Time: time.Unix(1, 0).UTC()}

// closure returns the narinfos of root's closure, root first, the others
// sorted by store path. Every path must be published: a missing narinfo is
// ErrNotFound for the whole image.
func (r *Registry) closure(ctx context.Context, root string) ([]*narinfo.NarInfo, error) {
	seen := map[string]*narinfo.NarInfo{}
	frontier := []string{root}
	for len(frontier) > 0 {
		if len(seen)+len(frontier) > r.maxClosure {
			return nil, fmt.Errorf("%w: closure of %s has more than %d paths", ErrTooLarge, root, r.maxClosure)
		}
		nis := make([]*narinfo.NarInfo, len(frontier))
		errs := make([]error, len(frontier))
		var wg sync.WaitGroup
		sem := make(chan struct{}, r.concurrency*4)
		for i, p := range frontier {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				nis[i], errs[i] = r.narinfo(ctx, p)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		var next []string
		for _, ni := range nis {
			seen[ni.StorePath] = ni
		}
		queued := map[string]bool{}
		for _, ni := range nis {
			for _, ref := range cacheclient.References(ni) {
				if _, ok := seen[ref]; !ok && !queued[ref] {
					queued[ref] = true
					next = append(next, ref)
				}
			}
		}
		frontier = next
	}
	out := make([]*narinfo.NarInfo, 0, len(seen))
	out = append(out, seen[root])
	for _, p := range slices.Sorted(maps.Keys(seen)) {
		if p != root {
			out = append(out, seen[p])
		}
	}
	return out, nil
}

// narinfo reads and checks the narinfo of storePath; a missing one is
// store.ErrNotFound.
func (r *Registry) narinfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	b, err := store.ReadAll(ctx, r.st, cachelayout.NarinfoKey(storePath), maxRecordSize)
	if err != nil {
		return nil, fmt.Errorf("narinfo of %s: %w", storePath, err)
	}
	ni, err := cacheclient.ParseNarinfo(b)
	if err != nil {
		return nil, fmt.Errorf("narinfo of %s: %w", storePath, err)
	}
	if ni.StorePath != storePath {
		// Another name with the same hash: that path is not published.
		return nil, fmt.Errorf("narinfo of %s names %s: %w", storePath, ni.StorePath, store.ErrNotFound)
	}
	return ni, nil
}

// layerRecord returns the layer record of ni, computing and storing it
// the first time. Concurrent requests for one path compute it once.
func (r *Registry) layerRecord(ctx context.Context, ni *narinfo.NarInfo) (*layerRecord, error) {
	rec, err := readLayerRecord(ctx, r.st, ni)
	if err != nil || rec != nil {
		return rec, err
	}
	// Computing is detached from the first asker's ctx (another asker may
	// be waiting for it) but bounded.
	ch := r.flight.DoChan(ni.StorePath, func() (any, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.computeTimeout)
		defer cancel()
		select {
		case r.sem <- struct{}{}:
		case <-cctx.Done():
			return nil, cctx.Err()
		}
		start := time.Now()
		rec, err := computeLayer(cctx, r.st, ni)
		// The slot is for computing (CPU); storing the record waits on
		// the disk, so the next layer computes meanwhile.
		<-r.sem
		if err != nil {
			return nil, err
		}
		r.computed.Store(layerKey(ni), rec.Digest)
		if err := writeRecord(cctx, r.st, cachelayout.OCILayerKey(ni.StorePath), rec); err != nil {
			// Serving does not need the record stored; the next server
			// will compute it again.
			r.log.Warn("oci: layer record not stored", "path", ni.StorePath, "err", err)
		}
		r.log.Debug("oci: layer computed", "path", ni.StorePath, "size", rec.Size, "duration", time.Since(start))
		return rec, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*layerRecord), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// image returns the image of root with entrypoint (nil: from the root's
// bin/), built from the layer records, or from memory while the root's
// narinfo is unchanged.
func (r *Registry) image(ctx context.Context, root string, entrypoint []string) (*image, error) {
	key := root + "\x00" + strings.Join(entrypoint, "\x00")
	fi, err := r.st.Stat(ctx, cachelayout.NarinfoKey(root))
	if err != nil {
		return nil, fmt.Errorf("narinfo of %s: %w", root, err)
	}
	if img := r.cache.get(key); img != nil && img.narinfoStat.Size == fi.Size && img.narinfoStat.ModTime.Equal(fi.ModTime) && time.Since(img.built) < imageTTL {
		return img, nil
	}
	nis, err := r.closure(ctx, root)
	if err != nil {
		return nil, err
	}
	recs := make([]*layerRecord, len(nis))
	errs := make([]error, len(nis))
	var wg sync.WaitGroup
	// Bounded: a closure of thousands of paths must not open thousands of
	// store objects at once.
	lookups := make(chan struct{}, r.concurrency*4)
	for i, ni := range nis {
		wg.Add(1)
		lookups <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-lookups }()
			recs[i], errs[i] = r.layerRecord(ctx, ni)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	img, err := r.assemble(root, entrypoint, nis, recs)
	if err != nil {
		return nil, err
	}
	img.narinfoStat, img.built = fi, time.Now()
	r.cache.put(key, img)
	return img, nil
}

// assemble builds the config and manifest from the layer records; nis[0]
// is the root.
func (r *Registry) assemble(root string, entrypoint []string, nis []*narinfo.NarInfo, recs []*layerRecord) (*image, error) {
	img := &image{root: root, entrypoint: entrypoint}
	if entrypoint == nil && len(recs[0].Programs) == 1 {
		entrypoint = []string{path.Join(root, "bin", recs[0].Programs[0])}
	}
	cfg := v1.ConfigFile{
		Architecture: r.platform.Architecture, OS: r.platform.OS, Variant: r.platform.Variant,
		Created: imageCreated,
		Config:  v1.Config{Entrypoint: entrypoint, Env: []string{"PATH=" + path.Join(root, "bin")}},
		RootFS:  v1.RootFS{Type: "layers"},
	}
	// Layers: dependencies first (sorted by path), the root last.
	order := append(slices.Clone(recs[1:]), recs[0])
	orderNI := append(slices.Clone(nis[1:]), nis[0])
	for i, rec := range order {
		h, err := v1.NewHash(rec.Digest)
		if err != nil {
			return nil, fmt.Errorf("%w: layer record of %s: %w", errLayer, rec.StorePath, err)
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, h)
		cfg.History = append(cfg.History, v1.History{Created: imageCreated, CreatedBy: "provenix: " + rec.StorePath})
		img.layers = append(img.layers, layer{
			desc: v1.Descriptor{MediaType: types.OCIUncompressedLayer, Size: rec.Size, Digest: h},
			ni:   orderNI[i],
		})
	}
	var err error
	if img.config, err = json.Marshal(cfg); err != nil {
		return nil, err
	}
	img.configDesc = descriptorOf(types.OCIConfigJSON, img.config)
	m := v1.Manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: img.configDesc,
		Annotations: map[string]string{annotationStorePath: root},
	}
	for _, l := range img.layers {
		m.Layers = append(m.Layers, l.desc)
	}
	if img.manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	img.digest = descriptorOf(types.OCIManifestSchema1, img.manifest).Digest
	return img, nil
}

// annotationStorePath names, on an image manifest, the store path it runs.
const annotationStorePath = "dev.provenix.store-path"

func descriptorOf(mt types.MediaType, b []byte) v1.Descriptor {
	h, n, _ := v1.SHA256(bytes.NewReader(b))
	return v1.Descriptor{MediaType: mt, Size: n, Digest: h}
}

// imageCache keeps recently built images; it is bounded, dropping an
// arbitrary entry when full (a miss only costs reading the records).
type imageCache struct {
	mu  sync.Mutex
	max int
	m   map[string]*image
}

func (c *imageCache) get(key string) *image {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *imageCache) put(key string, img *image) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[key] = img
}
