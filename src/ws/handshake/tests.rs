use proptest::prelude::*;

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn route_of(head: &str, origins: &Origins) -> Route {
    match parse(head.as_bytes(), origins, None) {
        Parsed::Done { route, head_len } => {
            assert_eq!(head_len, head.len());
            route
        }
        Parsed::Incomplete => panic!("incomplete: {head:?}"),
    }
}

fn status(route: Route) -> Option<Status> {
    match route {
        Route::Refuse { status, .. } => Some(status),
        _ => None,
    }
}

#[test]
fn the_rfc_example_key_gets_the_rfc_accept() {
    assert_eq!(
        route_of(&upgrade(""), &Origins::default()),
        Route::Upgrade {
            accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
        }
    );
}

#[test]
fn the_page_other_paths_and_methods() {
    let none = Origins::default();
    assert_eq!(
        route_of("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &none),
        Route::Page
    );
    assert_eq!(route_of("GET /?a=b HTTP/1.1\r\n\r\n", &none), Route::Page);
    assert_eq!(
        status(route_of("GET /nope HTTP/1.1\r\n\r\n", &none)),
        Some(Status::NotFound)
    );
    assert_eq!(
        status(route_of(
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            &none
        )),
        Some(Status::MethodNotAllowed)
    );
    assert_eq!(
        status(route_of("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", &none)),
        Some(Status::BadRequest),
        "a plain GET to /ws"
    );
}

#[test]
fn bad_upgrades_are_refused() {
    let none = Origins::default();
    let v12 = upgrade("").replace("Version: 13", "Version: 12");
    let short_key = upgrade("").replace(KEY, "abc");
    for head in [v12, short_key] {
        assert_eq!(
            status(route_of(&head, &none)),
            Some(Status::BadRequest),
            "{head}"
        );
    }
}

#[test]
fn origins_of_other_hosts_are_refused_unless_allowed() {
    let none = Origins::default();
    let same = upgrade("Origin: http://127.0.0.1:8080\r\n");
    assert!(matches!(route_of(&same, &none), Route::Upgrade { .. }));
    let other = upgrade("Origin: https://evil.example\r\n");
    assert_eq!(status(route_of(&other, &none)), Some(Status::Forbidden));
    let listed = Origins::new(&["https://EVIL.example/"]);
    assert!(matches!(route_of(&other, &listed), Route::Upgrade { .. }));
    assert!(matches!(
        route_of(&other, &Origins::new(&["*"])),
        Route::Upgrade { .. }
    ));
    assert!(
        matches!(route_of(&upgrade(""), &none), Route::Upgrade { .. }),
        "no Origin: not a browser, allowed"
    );
}

#[test]
fn heads_are_incomplete_until_the_blank_line_and_refused_past_8_kib() {
    let none = Origins::default();
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &none, None),
        Parsed::Incomplete
    );
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
    assert!(matches!(
        parse(huge.as_bytes(), &none, None),
        Parsed::Done {
            route: Route::Refuse {
                status: Status::BadRequest,
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        parse(b"\x16\x03\x01 garbage\r\n\r\n", &none, None),
        Parsed::Done {
            route: Route::Refuse {
                status: Status::BadRequest,
                ..
            },
            ..
        }
    ));
}

#[test]
fn responses_are_well_formed() {
    let r = error_response(Status::MethodNotAllowed, "only GET is served");
    let text = String::from_utf8(r).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{text}"
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\nAllow: GET"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let up = String::from_utf8(upgrade_response("abc")).unwrap();
    assert!(up.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(up.ends_with("Sec-WebSocket-Accept: abc\r\n\r\n"));
}

proptest! {
    /// Any bytes: never a panic, and a head is complete or refused once 8 KiB have arrived.
    #[test]
    fn any_input_is_parsed_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes, &Origins::default(), None);
    }

    /// A valid upgrade cut anywhere is incomplete before the cut reaches its end, and the same
    /// upgrade once it does.
    #[test]
    fn a_head_is_incomplete_until_its_end(cut in 0usize..200) {
        let head = upgrade("");
        let cut = cut.min(head.len());
        let got = parse(&head.as_bytes()[..cut], &Origins::default(), None);
        if cut < head.len() {
            prop_assert_eq!(got, Parsed::Incomplete);
        } else {
            let is_upgrade = matches!(got, Parsed::Done { route: Route::Upgrade { .. }, .. });
            prop_assert!(is_upgrade);
        }
    }
}

#[test]
fn with_a_token_an_upgrade_needs_it_in_the_query_or_a_bearer_header() {
    let token = Token::new(b"t0k/en").unwrap();
    let with = |target: &str, extra: &str| {
        let head = upgrade(extra).replacen("/ws", target, 1);
        match parse(head.as_bytes(), &Origins::default(), Some(&token)) {
            Parsed::Done { route, .. } => route,
            Parsed::Incomplete => panic!("incomplete"),
        }
    };
    assert!(matches!(
        with("/ws?token=t0k%2Fen", ""),
        Route::Upgrade { .. }
    ));
    assert!(matches!(
        with("/ws", "Authorization: Bearer t0k/en\r\n"),
        Route::Upgrade { .. }
    ));
    assert_eq!(status(with("/ws", "")), Some(Status::Unauthorized));
    assert_eq!(
        status(with("/ws?token=t0k", "")),
        Some(Status::Unauthorized)
    );
    assert_eq!(
        status(with("/ws", "Authorization: Bearer nope\r\n")),
        Some(Status::Unauthorized)
    );
    // The page itself is not secret: it passes its own ?token= on to /ws.
    assert_eq!(with("/", ""), Route::Page);
    let answer = String::from_utf8(error_response(Status::Unauthorized, "wrong token")).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
    assert!(
        answer.contains("\r\nWWW-Authenticate: Bearer\r\n"),
        "{answer}"
    );
}
