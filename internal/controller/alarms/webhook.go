package alarms

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
)

// Notification is the JSON body a webhook action POSTs, once when the
// alarm fires and once when it resolves (docs/alarms.md documents it).
type Notification struct {
	// Version of this body's layout.
	Version   int     `json:"version"`
	Alarm     string  `json:"alarm"`
	Severity  string  `json:"severity"`
	State     string  `json:"state"` // firing or resolved
	Kind      string  `json:"kind"`  // vm or host
	Target    string  `json:"target"`
	Host      string  `json:"host,omitempty"`
	Metric    string  `json:"metric"`
	Operator  string  `json:"operator"`
	Threshold float64 `json:"threshold"`
	Value     float64 `json:"value"`
	// FiredAt is when it fired; ResolvedAt when it resolved (resolved
	// notifications only).
	FiredAt    time.Time `json:"firedAt"`
	ResolvedAt time.Time `json:"resolvedAt,omitzero"`
	Message    string    `json:"message"`
}

// NotificationFor describes an instance's transition for a webhook.
func NotificationFor(d *alarm.Definition, in *alarm.Instance, msg string) Notification {
	state := "firing"
	if in.State == alarm.StateResolved {
		state = "resolved"
	}
	return Notification{Version: 1, Alarm: d.Name(), Severity: d.Spec.Severity, State: state, Kind: string(in.Kind),
		Target: in.Target, Host: in.Host, Metric: d.Spec.Metric, Operator: d.Spec.Operator, Threshold: d.Spec.Threshold,
		Value: in.Value, FiredAt: in.FiredAt, ResolvedAt: in.ResolvedAt, Message: msg}
}

// Webhook retry policy: a receiver that is down for a minute still gets
// the notification; one down for longer gets an event saying it did not.
const (
	webhookAttempts = 6
	webhookTimeout  = 5 * time.Second
	webhookBackoff  = time.Second
)

// postWithRetry POSTs n to url until a 2xx answer, with exponential
// backoff (1 s, 2 s, 4 s, ...), webhookAttempts times at most. It returns
// the attempts made and the last error.
func postWithRetry(ctx context.Context, client *http.Client, url string, n Notification) (int, error) {
	body, err := json.Marshal(n)
	if err != nil {
		return 0, err
	}
	wait := webhookBackoff
	var last error
	for attempt := 1; attempt <= webhookAttempts; attempt++ {
		last = postOnce(ctx, client, url, body)
		if last == nil {
			return attempt, nil
		}
		if attempt == webhookAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return attempt, fmt.Errorf("%w (then: %w)", last, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
	return webhookAttempts, last
}

func postOnce(ctx context.Context, client *http.Client, url string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil-alarms/1")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook %s answered %s", url, resp.Status)
	}
	return nil
}
