package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OpenStaged opens the object under key for streaming. ctx bounds the whole
// read, not only the open (StagingTimeout when it has no deadline); Close
// releases it. The reader checks the content against the stored digest and
// fails with ErrCorrupt instead of returning io.EOF if they differ, so a
// caller must not trust bytes it read until it saw io.EOF. An absent
// object is ErrNotFound. A scoped key (ScopedKey) is read from its
// scope's chunks alone, without the meta anyone could forge: its
// StagedInfo has no Digest, and the caller checks the content itself.
func (c *Conn) OpenStaged(ctx context.Context, key string) (io.ReadCloser, StagedInfo, error) {
	if err := validKey(key); err != nil {
		return nil, StagedInfo{}, fmt.Errorf("queue: open staged: %w", err)
	}
	ctx, cancel := withDefaultTimeout(ctx, StagingTimeout)
	if scope, ok := KeyScope(key); ok {
		rctx, rcancel := context.WithTimeout(ctx, DefaultTimeout)
		defer rcancel()
		_, stream, err := c.staging(rctx)
		if err != nil {
			cancel()
			return nil, StagedInfo{}, fmt.Errorf("queue: open staged %s: %w", key, err)
		}
		rc, size, _, err := c.openScoped(ctx, rctx, stream, scopedChunkID(key, scope))
		if err != nil {
			cancel()
			return nil, StagedInfo{}, fmt.Errorf("queue: open staged %s: %w", key, err)
		}
		return &stagedReader{res: scopedResult{rc}, cancel: cancel, key: key}, StagedInfo{Key: key, Size: size}, nil
	}
	rc, info, err := c.openStaged(ctx, key)
	if err != nil {
		cancel()
		return nil, StagedInfo{}, fmt.Errorf("queue: open staged %s: %w", key, err)
	}
	return &stagedReader{res: rc, cancel: cancel, key: key}, info, nil
}

// openStaged opens key for reading within ctx. The requests that open it
// each get DefaultTimeout, not ctx's (long) deadline: a request sent to a
// stream leader that just died is never answered, and waiting the
// StagingTimeout for it would stall the caller for an hour instead of
// failing it for a retry once the cluster has a new leader.
func (c *Conn) openStaged(ctx context.Context, key string) (jetstream.ObjectResult, StagedInfo, error) {
	rctx, rcancel := context.WithTimeout(ctx, DefaultTimeout)
	defer rcancel()
	obs, stream, err := c.staging(rctx)
	if err != nil {
		return nil, StagedInfo{}, err
	}
	info, err := obs.GetInfo(rctx, key)
	if err != nil {
		return nil, StagedInfo{}, mapJSError(err)
	}
	if info.Opts != nil && info.Opts.Link != nil {
		return nil, StagedInfo{}, fmt.Errorf("%w: is a link, not an object", ErrCorrupt)
	}
	if info.Chunks <= 1 {
		// Most NARs fit in one chunk: one direct get reads it, where
		// nats.go's reader would count chunks (a stream info with a
		// subject filter, costly on a big stream) and create and delete
		// a consumer. The digest is checked all the same.
		res, err := readSmallObject(rctx, stream, info)
		if err != nil {
			return nil, StagedInfo{}, err
		}
		return res, StagedInfo{Key: key, Size: info.Size, Digest: info.Digest}, nil
	}
	// nats.go's reader waits for chunks until ctx ends: with chunks
	// missing that would be an hour. Count them first and fail at once.
	if err := checkChunks(rctx, stream, info); err != nil {
		return nil, StagedInfo{}, err
	}
	res, err := getObject(ctx, obs, key, DefaultTimeout)
	if err != nil {
		return nil, StagedInfo{}, mapJSError(err)
	}
	return res, StagedInfo{Key: key, Size: info.Size, Digest: info.Digest}, nil
}

// readSmallObject reads an object of at most one chunk into memory and
// checks its size and digest; missing content is ErrCorrupt.
func readSmallObject(ctx context.Context, stream jetstream.Stream, info *jetstream.ObjectInfo) (jetstream.ObjectResult, error) {
	var data []byte
	if info.Chunks == 1 {
		m, err := stream.GetLastMsgForSubject(ctx, stagingChunksPrefix+info.NUID)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: 0 of 1 chunks present", ErrCorrupt)
		}
		if err != nil {
			return nil, mapJSError(err)
		}
		data = m.Data
	}
	h := sha256.Sum256(data)
	want, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return nil, fmt.Errorf("%w: digest %q: %w", ErrCorrupt, info.Digest, err)
	}
	if uint64(len(data)) != info.Size || string(h[:]) != string(want) {
		return nil, fmt.Errorf("%w: %w: %d bytes staged, %d in the object's meta", ErrCorrupt, jetstream.ErrDigestMismatch, len(data), info.Size)
	}
	return &smallObject{Reader: bytes.NewReader(data), info: info}, nil
}

// smallObject is a jetstream.ObjectResult over content already read.
type smallObject struct {
	*bytes.Reader
	info *jetstream.ObjectInfo
}

func (o *smallObject) Info() (*jetstream.ObjectInfo, error) { return o.info, nil }
func (o *smallObject) Error() error                         { return nil }
func (o *smallObject) Close() error                         { return nil }

// errOpenTimeout: opening a staged object got no answer in time.
var errOpenTimeout = errors.New("no answer from the staging stream (leader election?)")

// getObject is obs.Get(ctx, key), failing if the open itself (creating
// the consumer that delivers the chunks) takes longer than open. Get uses
// one ctx both for that request and for the whole read that follows, so
// the request cannot get a shorter deadline of its own; it is cancelled
// from outside instead.
func getObject(ctx context.Context, obs jetstream.ObjectStore, key string, open time.Duration) (jetstream.ObjectResult, error) {
	gctx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(open, func() { cancel(errOpenTimeout) })
	res, err := obs.Get(gctx, key)
	if !t.Stop() {
		if err == nil {
			res.Close()
		}
		return nil, fmt.Errorf("open %s: %w", key, errOpenTimeout)
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	// The read still runs under gctx: cancel it when the result is closed.
	return &cancelOnClose{ObjectResult: res, cancel: func() { cancel(nil) }}, nil
}

type cancelOnClose struct {
	jetstream.ObjectResult
	cancel func()
}

func (r *cancelOnClose) Close() error {
	err := r.ObjectResult.Close()
	r.cancel()
	return err
}

// checkChunks fails with ErrCorrupt unless all of info's chunks are in the
// stream (they go missing when a concurrent replace purges them, or when
// an upload was not ours and went wrong).
func checkChunks(ctx context.Context, stream jetstream.Stream, info *jetstream.ObjectInfo) error {
	if info.Chunks == 0 {
		return nil
	}
	subj := stagingChunksPrefix + info.NUID
	si, err := stream.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return mapJSError(err)
	}
	if got := si.State.Subjects[subj]; got != uint64(info.Chunks) {
		return fmt.Errorf("%w: %d of %d chunks present", ErrCorrupt, got, info.Chunks)
	}
	return nil
}

type stagedReader struct {
	res    jetstream.ObjectResult
	cancel context.CancelFunc
	key    string
}

func (s *stagedReader) Read(p []byte) (int, error) {
	n, err := s.res.Read(p)
	switch {
	case err == nil || err == io.EOF:
		return n, err
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return n, fmt.Errorf("queue: read staged %s: %w: %w", s.key, ErrCorrupt, err)
	default:
		return n, fmt.Errorf("queue: read staged %s: %w", s.key, err)
	}
}

func (s *stagedReader) Close() error {
	err := s.res.Close()
	s.cancel()
	return err
}

// scopedResult is a scoped object's reader as a jetstream.ObjectResult,
// for stagedReader.
type scopedResult struct{ io.ReadCloser }

func (scopedResult) Info() (*jetstream.ObjectInfo, error) {
	return nil, errors.New("scoped object: no info")
}
func (scopedResult) Error() error { return nil }
