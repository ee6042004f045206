package chunked

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cachelayout"
)

// ErrShared means CollectChunks was asked to collect a chunk store that
// other caches share: only Collect, given all of them, may.
var ErrShared = errors.New("chunked: the chunk store is shared with other caches; collect it with all of them")

// CollectChunks deletes this cache's chunks that no chunk list names and
// that were last written before cutoff, and returns them (in a dry run,
// only returns them). Chunks kept in another store (Options.Chunks) are
// not collected here: that store may serve other caches too (ErrShared).
func (s *Store) CollectChunks(ctx context.Context, cutoff time.Time, dryRun bool) ([]store.Info, error) {
	if s.o.Chunks != nil {
		return nil, ErrShared
	}
	return Collect(ctx, s.chunks, []store.Store{s.inner}, cutoff, dryRun)
}

// Collect deletes the chunks of the chunk store that none of the caches'
// chunk lists name and that were last written before cutoff. caches must
// be every cache whose chunks live there (their stores as wrapped, not
// the chunked stores). A chunk that is rewritten during the run (a writer
// reusing it refreshes it) is kept.
//
// The chunks are listed before the lists: a list committed after its
// listing names chunks written or refreshed by its writer, so younger
// than the cutoff if the cutoff is older than RefreshAge plus the
// longest write.
func Collect(ctx context.Context, chunks store.Store, caches []store.Store, cutoff time.Time, dryRun bool) ([]store.Info, error) {
	var old []store.Info
	err := chunks.List(ctx, cachelayout.ChunkPrefix, func(fi store.Info) error {
		if fi.ModTime.Before(cutoff) {
			old = append(old, fi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("chunked: list chunks: %w", err)
	}
	if len(old) == 0 {
		return nil, nil
	}
	used := map[[32]byte]bool{}
	for _, c := range caches {
		if err := markUsed(ctx, c, used); err != nil {
			return nil, err
		}
	}
	var gone []store.Info
	var errs []error
	for _, fi := range old {
		sum, ok := chunkSum(fi.Key)
		if !ok || used[sum] {
			continue // not a chunk of ours, or still named
		}
		if !dryRun {
			cur, err := chunks.Stat(ctx, fi.Key)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !cur.ModTime.Equal(fi.ModTime) {
				continue // refreshed by a writer since the listing
			}
			if err := chunks.Delete(ctx, fi.Key); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		gone = append(gone, fi)
	}
	return gone, errors.Join(errs...)
}

// markUsed adds the chunks every chunk list of the cache names.
func markUsed(ctx context.Context, cache store.Store, used map[[32]byte]bool) error {
	var keys []string
	err := cache.List(ctx, cachelayout.NARPrefix, func(fi store.Info) error {
		keys = append(keys, fi.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunked: list NARs: %w", err)
	}
	for _, k := range keys {
		rc, err := cache.Open(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted since listed
		}
		if err != nil {
			return fmt.Errorf("chunked: %s: %w", k, err)
		}
		br := bufio.NewReaderSize(rc, 64<<10)
		if head, _ := br.Peek(len(listMagic)); !isList(head) {
			rc.Close()
			continue // a whole NAR
		}
		l, err := parseList(br)
		rc.Close()
		if err != nil {
			// A list we cannot read may name any chunk: collecting
			// would risk breaking it.
			return fmt.Errorf("chunked: %s: %w; no chunk collected", k, err)
		}
		for _, e := range l.entries {
			used[e.sum] = true
		}
	}
	return nil
}

// chunkSum parses a chunk key back into its hash.
func chunkSum(key string) ([32]byte, bool) {
	var sum [32]byte
	rest, ok := strings.CutPrefix(key, cachelayout.ChunkPrefix)
	if !ok || len(rest) != 2+1+64 || rest[2] != '/' || rest[:2] != rest[3:5] {
		return sum, false
	}
	if _, err := hex.Decode(sum[:], []byte(rest[3:])); err != nil {
		return sum, false
	}
	return sum, true
}
