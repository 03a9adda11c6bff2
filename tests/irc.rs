//! The IRC door over real sockets: registration (SASL, PASS, NickServ), the welcome, channels
//! as rooms, messages between IRC, the line protocol and HTTP, the numerics of refusals, and
//! the limits (line length, bad lines, SendQ, PING timeout).

mod common;

use std::time::Duration;

use common::irc::{Irc, Line};
use common::{Backend, Msg, TestServer};

async fn server() -> TestServer {
    TestServer::start_with(|c| c.load_test_hashing = true).await
}

fn irc_addr(server: &TestServer) -> std::net::SocketAddr {
    server.irc.expect("the IRC door is open")
}

#[tokio::test]
async fn sasl_logs_in_while_registering_and_the_welcome_says_who_and_what_is_supported() {
    let server = server().await;
    let mut alice = server.user("alice").await;
    alice.ok("JOIN #class").await;
    let mut irc = Irc::connect(irc_addr(&server)).await;
    irc.send("CAP LS 302").await;
    let ls = irc.expect("CAP").await;
    assert_eq!(ls.params[1], "LS");
    for cap in [
        "sasl=PLAIN",
        "server-time",
        "echo-message",
        "message-tags",
        "account-tag",
        "multi-prefix",
    ] {
        assert!(
            ls.text().split(' ').any(|c| c == cap),
            "{cap} not offered: {}",
            ls.raw
        );
    }
    irc.send("CAP REQ :sasl server-time").await;
    assert_eq!(irc.expect("CAP").await.params[1], "ACK");
    // A nick other than the account's: the welcome renames it to the account.
    irc.send("NICK somebody").await;
    irc.send("USER x 0 * :Alice").await;
    irc.send("AUTHENTICATE PLAIN").await;
    irc.expect("AUTHENTICATE").await;
    let creds = base64_of("\0alice\0pw");
    irc.send(&format!("AUTHENTICATE {creds}")).await;
    let (logged_in, _) = irc.until("900").await;
    assert_eq!(logged_in.params[2], "alice");
    irc.expect("903").await;
    irc.send("CAP END").await;
    let welcome = irc.expect("001").await;
    assert_eq!(welcome.params[0], "alice", "the welcome's nick is the account's");
    assert!(welcome.text().contains("alice!alice@chatd"), "{}", welcome.raw);
    let (_, burst) = irc.until("376").await;
    let isupport: Vec<&str> = burst
        .iter()
        .filter(|l| l.command == "005")
        .flat_map(|l| l.params[1..l.params.len() - 1].iter().map(String::as_str))
        .collect();
    for token in [
        "CHANTYPES=#",
        "CASEMAPPING=ascii",
        "NETWORK=chatd",
        "NICKLEN=32",
        "CHANNELLEN=33",
        "TOPICLEN=300",
        "CHANMODES=,,,imnt",
        "PREFIX=(qov)~@+",
    ] {
        assert!(isupport.contains(&token), "{token} not in ISUPPORT: {isupport:?}");
    }
    for numeric in ["002", "003", "004", "251", "375", "372"] {
        assert!(
            burst.iter().any(|l| l.command == numeric),
            "no {numeric} in the welcome"
        );
    }
    // The account's rooms are joined as it logs in.
    let join = irc.expect("JOIN").await;
    assert_eq!(join.params, ["#class"]);
    assert_eq!(join.nick(), "alice");
    let names = irc.expect("353").await;
    assert_eq!(names.text(), "~alice");
    irc.expect("366").await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_sasl_password_fails_and_registration_goes_on_without_an_account() {
    let server = server().await;
    server.user("alice").await;
    let mut irc = Irc::connect(irc_addr(&server)).await;
    irc.send("CAP REQ :sasl").await;
    irc.expect("CAP").await;
    irc.send("AUTHENTICATE PLAIN").await;
    irc.expect("AUTHENTICATE").await;
    irc.send(&format!("AUTHENTICATE {}", base64_of("\0alice\0wrong")))
        .await;
    let fail = irc.expect("904").await;
    assert!(fail.text().contains("SASL authentication failed"), "{}", fail.raw);
    // Someone else's authorisation name is refused before any password is checked.
    irc.send("AUTHENTICATE PLAIN").await;
    irc.expect("AUTHENTICATE").await;
    irc.send(&format!("AUTHENTICATE {}", base64_of("bob\0alice\0pw")))
        .await;
    irc.expect("904").await;
    irc.send("CAP END").await;
    irc.send("NICK alice").await;
    irc.send("USER a 0 * :a").await;
    irc.until("376").await;
    let notice = irc.expect("NOTICE").await;
    assert!(notice.source.starts_with("NickServ!"), "{}", notice.raw);
    assert!(notice.text().contains("IDENTIFY"), "{}", notice.raw);
    irc.send("JOIN #class").await;
    let refused = irc.expect("451").await;
    assert!(refused.text().contains("NickServ IDENTIFY"), "{}", refused.raw);
    server.stop().await;
}

#[tokio::test]
async fn pass_logs_in_to_the_nicks_account_or_a_named_one_and_a_wrong_one_closes() {
    let server = server().await;
    server.user("alice").await;
    server.user("bob").await;
    let addr = irc_addr(&server);
    let mut irc = Irc::connect(addr).await;
    irc.send("PASS pw").await;
    irc.send("NICK alice").await;
    irc.send("USER a 0 * :a").await;
    assert_eq!(irc.expect("001").await.params[0], "alice");
    assert_eq!(irc.expect("900").await.params[2], "alice");

    let mut named = Irc::connect(addr).await;
    named.send("PASS bob:pw").await;
    named.send("NICK whatever").await;
    named.send("USER b 0 * :b").await;
    assert_eq!(named.expect("001").await.params[0], "bob");

    let mut wrong = Irc::connect(addr).await;
    wrong.send("PASS nope").await;
    wrong.send("NICK alice").await;
    wrong.send("USER a 0 * :a").await;
    wrong.expect("464").await;
    let error = wrong.expect("ERROR").await;
    assert!(error.text().contains("bad password"), "{}", error.raw);
    assert!(wrong.closed_within(Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_password_is_required_and_accounts_then_use_nickserv() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_password = Some("letmein".into());
    })
    .await;
    server.user("alice").await;
    let addr = irc_addr(&server);
    let mut refused = Irc::connect(addr).await;
    refused.send("NICK alice").await;
    refused.send("USER a 0 * :a").await;
    refused.expect("464").await;
    assert!(refused.closed_within(Duration::from_secs(5)).await);

    let mut irc = Irc::connect(addr).await;
    irc.send("PASS letmein").await;
    irc.send("NICK alice").await;
    irc.send("USER a 0 * :a").await;
    irc.until("376").await;
    irc.send("PRIVMSG NickServ :IDENTIFY pw").await;
    assert_eq!(irc.expect("900").await.params[2], "alice");
    server.stop().await;
}

#[tokio::test]
async fn nickserv_registers_identifies_and_renames_who_does_not_log_in() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_identify_within = 1;
    })
    .await;
    let addr = irc_addr(&server);
    let mut carol = Irc::register(addr, "carol").await;
    let hint = carol.expect("NOTICE").await;
    assert!(hint.text().contains("REGISTER"), "{}", hint.raw);
    carol.send("PRIVMSG NickServ :HELP").await;
    let (help, _) = carol.until("NOTICE").await;
    assert!(help.text().contains("NickServ"), "{}", help.raw);
    carol.send("PRIVMSG NickServ :REGISTER secret").await;
    assert_eq!(carol.expect("900").await.params[2], "carol");
    // The account is a chatd account: the line protocol logs in to it.
    let mut line = server.client().await;
    line.ok("AUTH carol secret").await;

    // Someone on carol's nick who does not log in is renamed.
    let mut squatter = Irc::register(addr, "carol").await;
    let notice = squatter.expect("NOTICE").await;
    assert!(notice.text().contains("IDENTIFY"), "{}", notice.raw);
    let renamed = squatter.expect("NICK").await;
    assert_eq!(renamed.nick(), "carol");
    assert!(renamed.text().starts_with("Guest"), "{}", renamed.raw);
    // ...and may still log in, taking the account's nick back.
    squatter.send("PRIVMSG NickServ :IDENTIFY carol secret").await;
    let back = squatter.expect("NICK").await;
    assert_eq!(back.text(), "carol");
    squatter.expect("900").await;
    // Wrong passwords count against the same limits as AUTH.
    let mut guesser = Irc::register(addr, "guess").await;
    let mut last = String::new();
    for _ in 0..7 {
        guesser.send("PRIVMSG NickServ :IDENTIFY carol wrong").await;
        loop {
            let notice = guesser.expect("NOTICE").await;
            if notice.text().starts_with("Login to carol refused") {
                last = notice.text().to_string();
                break;
            }
        }
    }
    assert!(
        last.contains("RATE") || last.contains("too many") || last.contains("wait"),
        "{last}"
    );
    server.stop().await;
}

#[tokio::test]
async fn telnet_http_and_irc_users_talk_in_one_room_in_one_order_with_the_original_time() {
    for backend in backends("irc_room_across_doors") {
        let server = TestServer::on_with(backend, |c| c.load_test_hashing = true).await;
        let mut bob = server.user("bob").await;
        bob.ok("JOIN #class").await;
        server.user("alice").await;
        let mut irc = Irc::sasl(
            irc_addr(&server),
            "alice",
            "pw",
            "server-time message-tags account-tag echo-message",
        )
        .await;
        irc.send("JOIN #Class").await;
        let join = irc.expect("JOIN").await;
        assert_eq!(join.params, ["#class"], "the room's name as it was created");
        let names = irc.expect("353").await;
        assert_eq!(names.text(), "~bob alice");
        // Telnet sees the IRC user join, in the room's stream.
        let joined = Msg::parse_room(&bob.line().await);
        assert_eq!(joined.text, "alice joined");

        let id: i64 = bob.ok("SEND #class hello from telnet").await.parse().unwrap();
        let said = irc.expect("PRIVMSG").await;
        assert_eq!(said.nick(), "bob");
        assert_eq!(said.params, ["#class", "hello from telnet"]);
        assert_eq!(said.tag("msgid"), Some(id.to_string().as_str()));
        assert_eq!(said.tag("account"), Some("bob"));
        let history = bob.cmd("HISTORY #class").await;
        let stored = history
            .data
            .iter()
            .map(|l| Msg::parse_room(l))
            .find(|m| m.id == id)
            .unwrap();
        assert_eq!(
            said.tag("time"),
            Some(stored.time.as_str()),
            "server-time is the commit time"
        );

        irc.send("PRIVMSG #class :hello from irc").await;
        let echoed = irc.expect("PRIVMSG").await;
        assert_eq!(echoed.nick(), "alice", "echo-message returns it once stored");
        let pushed = Msg::parse_room(&bob.line().await);
        assert_eq!(
            (pushed.from.as_str(), pushed.text.as_str()),
            ("alice", "hello from irc")
        );
        assert_eq!(echoed.tag("msgid"), Some(pushed.id.to_string().as_str()));
        assert!(pushed.id > id);

        // /me both ways.
        irc.send("PRIVMSG #class :\u{1}ACTION waves\u{1}").await;
        irc.expect("PRIVMSG").await;
        assert_eq!(Msg::parse_room(&bob.line().await).text, "/me waves");
        bob.ok("SEND #class /me nods").await;
        let action = irc.expect("PRIVMSG").await;
        assert_eq!(action.text(), "\u{1}ACTION nods\u{1}");

        // HTTP says it in the room too.
        let token = common::http_token(&server.url(""), "bob").await;
        let http = reqwest::Client::new()
            .post(server.url("/rooms/class/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"message": "hello from http"}))
            .send()
            .await
            .unwrap();
        assert!(http.status().is_success(), "{}", http.status());
        let from_http = irc.expect("PRIVMSG").await;
        assert_eq!(from_http.params, ["#class", "hello from http"]);
        server.stop().await;
    }
}

#[tokio::test]
async fn direct_messages_are_sends_stored_first_and_seen_by_inbox() {
    let server = server().await;
    let mut bob = server.user("bob").await;
    server.user("alice").await;
    let mut irc = Irc::sasl(irc_addr(&server), "alice", "pw", "").await;
    irc.send("PRIVMSG bob :hi bob").await;
    let pushed = Msg::parse(&bob.line().await);
    assert_eq!((pushed.from.as_str(), pushed.text.as_str()), ("alice", "hi bob"));
    let inbox = bob.whole_inbox().await;
    assert_eq!(inbox.last().unwrap().id, pushed.id);
    bob.ok("SEND alice hi alice").await;
    let got = irc.expect("PRIVMSG").await;
    assert_eq!(got.nick(), "bob");
    assert_eq!(got.params, ["alice", "hi alice"]);
    // Nobody of that name; several targets; no text.
    irc.send("PRIVMSG nobody :hello").await;
    assert_eq!(irc.expect("401").await.params[1], "nobody");
    irc.send("PRIVMSG bob,nobody :two").await;
    irc.expect("401").await;
    assert_eq!(Msg::parse(&bob.line().await).text, "two");
    irc.send("PRIVMSG bob").await;
    irc.expect("412").await;
    irc.send("PRIVMSG").await;
    irc.expect("411").await;
    // A NOTICE is never answered with an error.
    irc.send("NOTICE nobody :quiet").await;
    irc.send("PING :after").await;
    let pong = irc.next_is("PONG").await;
    assert_eq!(pong.text(), "after");
    // Away: a sender is told.
    irc.send("AWAY :at lunch").await;
    irc.expect("306").await;
    let mut other = Irc::sasl(irc_addr(&server), "bob", "pw", "").await;
    other.send("PRIVMSG alice :are you there").await;
    let away = other.expect("301").await;
    assert_eq!(away.params[1..], ["alice".to_string(), "at lunch".to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn channel_operations_map_to_rooms_with_their_numerics() {
    let server = server().await;
    server.user("owner").await;
    server.user("kid").await;
    let addr = irc_addr(&server);
    let mut op = Irc::sasl(addr, "owner", "pw", "multi-prefix").await;
    let mut kid = Irc::sasl(addr, "kid", "pw", "").await;
    op.send("JOIN #lab").await;
    op.expect("366").await;
    op.send("MODE #lab").await;
    assert_eq!(op.expect("324").await.params[2], "+nt");
    op.send("TOPIC #lab :Lab 3: sockets").await;
    assert_eq!(op.expect("TOPIC").await.text(), "Lab 3: sockets");

    kid.send("JOIN #lab").await;
    let topic = kid.expect("332").await;
    assert_eq!(topic.text(), "Lab 3: sockets");
    assert_eq!(kid.expect("353").await.text(), "~owner kid");
    assert_eq!(op.expect("JOIN").await.nick(), "kid");
    // With multi-prefix, the owner shows both prefixes.
    op.send("NAMES #lab").await;
    assert_eq!(op.expect("353").await.text(), "~@owner kid");
    // A member is no op.
    kid.send("TOPIC #lab :mine now").await;
    kid.expect("482").await;
    kid.send("MODE #lab +m").await;
    kid.expect("482").await;
    kid.send("KICK #lab owner").await;
    kid.expect("482").await;
    // Moderated: only ops speak.
    op.send("MODE #lab +m").await;
    assert_eq!(op.expect("MODE").await.params, ["#lab", "+m"]);
    assert_eq!(kid.expect("MODE").await.params, ["#lab", "+m"]);
    kid.send("PRIVMSG #lab :can I speak").await;
    kid.expect("404").await;
    op.send("MODE #lab +o kid").await;
    assert_eq!(kid.expect("MODE").await.params, ["#lab", "+o", "kid"]);
    kid.send("PRIVMSG #lab :now I can").await;
    assert_eq!(op.expect("PRIVMSG").await.text(), "now I can");
    // Modes a room cannot hold are refused, never accepted silently.
    for (mode, letter) in [
        ("+k secret", "k"),
        ("+l 10", "l"),
        ("+b *!*@*", "b"),
        ("-n", "n"),
        ("+z", "z"),
    ] {
        op.send(&format!("MODE #lab {mode}")).await;
        let refused = op.expect("472").await;
        assert_eq!(refused.params[1], letter, "{}", refused.raw);
    }
    op.send("MODE #lab b").await;
    op.expect("368").await;
    // WHO and NAMES and LIST.
    op.send("WHO #lab").await;
    let (end, rows) = op.until("315").await;
    assert_eq!(end.params[1], "#lab");
    let whos: Vec<&Line> = rows.iter().filter(|l| l.command == "352").collect();
    assert_eq!(whos.len(), 2);
    assert!(
        whos.iter().any(|l| l.params[5] == "kid" && l.params[6] == "H@"),
        "{whos:?}"
    );
    op.send("LIST").await;
    let (_, listed) = op.until("323").await;
    assert!(listed
        .iter()
        .any(|l| l.command == "322" && l.params[1] == "#lab" && l.params[2] == "2"));
    // Invite-only: a newcomer needs an invitation.
    op.send("MODE #lab +i").await;
    op.expect("MODE").await;
    server.user("late").await;
    let mut late = Irc::sasl(addr, "late", "pw", "").await;
    late.send("JOIN #lab").await;
    late.expect("473").await;
    op.send("INVITE late #lab").await;
    assert_eq!(
        op.expect("341").await.params[1..],
        ["late".to_string(), "#lab".to_string()]
    );
    late.send("JOIN #lab").await;
    late.expect("366").await;
    // KICK: the kicked client leaves the channel; the others see it.
    op.send("KICK #lab kid :enough").await;
    let kicked = kid.expect("KICK").await;
    assert_eq!(kicked.params, ["#lab", "kid", "enough"]);
    assert_eq!(kicked.nick(), "owner");
    kid.send("PRIVMSG #lab :still here?").await;
    kid.expect("404").await;
    op.send("KICK #lab kid").await;
    op.expect("441").await;
    // Nobody by that nick at all: 401, not 441.
    op.send("KICK #lab nobody").await;
    op.expect("401").await;
    op.send("MODE #lab +o nobody").await;
    op.expect("401").await;
    // Inviting a member: 443.
    op.send("INVITE late #lab").await;
    assert_eq!(op.expect("443").await.params[1..3], ["late", "#lab"]);
    // PART and JOIN 0.
    late.send("PART #lab :bye").await;
    assert_eq!(late.expect("PART").await.params, ["#lab", "bye"]);
    late.send("PART #lab").await;
    late.expect("442").await;
    late.send("JOIN #a,#b").await;
    late.expect("JOIN").await;
    late.expect("JOIN").await;
    late.send("JOIN 0").await;
    let parts: Vec<String> = vec![
        late.expect("PART").await.params[0].clone(),
        late.expect("PART").await.params[0].clone(),
    ];
    assert_eq!(parts, ["#a", "#b"]);
    late.send("JOIN #bad/name").await;
    late.expect("479").await;
    server.stop().await;
}

#[tokio::test]
async fn a_room_change_made_at_another_door_reaches_the_irc_client_in_order() {
    let server = server().await;
    let mut bob = server.user("bob").await;
    server.user("alice").await;
    let mut irc = Irc::sasl(irc_addr(&server), "alice", "pw", "").await;
    bob.ok("JOIN #team").await;
    bob.ok("INVITE #team alice").await;
    // alice joins from telnet: her IRC session is told she is in #team.
    let mut alice_line = server.client().await;
    alice_line.ok("AUTH alice pw").await;
    alice_line.ok("JOIN #team").await;
    let join = irc.expect("JOIN").await;
    assert_eq!((join.nick(), join.params[0].as_str()), ("alice", "#team"));
    assert_eq!(irc.expect("353").await.text(), "~bob alice");
    bob.ok("TOPIC #team week 2").await;
    assert_eq!(irc.expect("TOPIC").await.text(), "week 2");
    bob.ok("MODE #team +o alice").await;
    assert_eq!(irc.expect("MODE").await.params, ["#team", "+o", "alice"]);
    bob.ok("SEND #team first").await;
    bob.ok("SEND #team second").await;
    assert_eq!(irc.expect("PRIVMSG").await.text(), "first");
    assert_eq!(irc.expect("PRIVMSG").await.text(), "second");
    alice_line.ok("LEAVE #team").await;
    let part = irc.expect("PART").await;
    assert_eq!((part.nick(), part.params[0].as_str()), ("alice", "#team"));
    server.stop().await;
}

#[tokio::test]
async fn users_are_found_with_whois_ison_userhost_and_who() {
    let server = server().await;
    server.user("alice").await;
    let _bob = server.user("bob").await;
    server.user("offline").await;
    let mut irc = Irc::sasl(irc_addr(&server), "alice", "pw", "").await;
    irc.send("WHOIS bob").await;
    let (end, lines) = irc.until("318").await;
    assert_eq!(end.params[1], "bob");
    assert!(lines.iter().any(|l| l.command == "311" && l.params[1] == "bob"));
    assert!(lines.iter().any(|l| l.command == "330" && l.params[2] == "bob"));
    irc.send("WHOIS offline").await;
    assert!(irc.expect("401").await.text().contains("not connected"));
    irc.send("WHOIS ghost").await;
    irc.expect("401").await;
    irc.send("ISON bob offline ghost alice").await;
    assert_eq!(irc.expect("303").await.text(), "bob alice");
    irc.send("USERHOST bob ghost").await;
    assert_eq!(irc.expect("302").await.text(), "bob=+bob@chatd");
    irc.send("WHO bob").await;
    let who = irc.expect("352").await;
    assert_eq!(who.params[5], "bob");
    irc.expect("315").await;
    irc.send("MODE alice").await;
    irc.expect("221").await;
    irc.send("MODE bob +i").await;
    irc.expect("502").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_lines_get_one_numeric_each_and_the_connection_goes_on() {
    let server = server().await;
    let addr = irc_addr(&server);
    let mut irc = Irc::connect(addr).await;
    // Before registration.
    irc.send("JOIN #x").await;
    irc.next_is("451").await;
    irc.send("FROB").await;
    assert_eq!(irc.next_is("421").await.params[1], "FROB");
    irc.send("USER onlyone").await;
    irc.next_is("461").await;
    irc.send("NICK bad!nick").await;
    irc.next_is("432").await;
    irc.send("NICK ok").await;
    // A real name in another encoding (Latin-1 here) still registers.
    irc.write(b"USER ok 0 * :Ren\xe9 Dupont\r\n").await;
    irc.until("376").await;
    irc.drain(Duration::from_millis(200)).await;
    // A flood of bad lines: each gets its one numeric, in order.
    let mut flood = Vec::new();
    for i in 0..200 {
        match i % 5 {
            0 => flood.extend_from_slice(b"NOSUCHCOMMAND\r\n"),
            1 => flood.extend_from_slice(b"PRIVMSG #a :\xff\xfe\r\n"),
            2 => {
                flood.extend_from_slice(b"PRIVMSG #a :");
                flood.extend(std::iter::repeat_n(b'x', 600));
                flood.extend_from_slice(b"\r\n");
            }
            3 => flood.extend_from_slice(b"PRIVMSG #a :nul\0byte\r\n"),
            _ => flood.extend_from_slice(b"KICK\r\n"),
        }
    }
    irc.write(&flood).await;
    for i in 0..200 {
        let expected = ["421", "FAIL", "417", "FAIL", "461"][i % 5];
        let line = irc.line().await;
        assert_eq!(line.command, expected, "line {i}: {}", line.raw);
        if expected == "FAIL" {
            assert_eq!(line.params[..2], ["PRIVMSG", "INVALID_UTF8"], "{}", line.raw);
        }
    }
    irc.send("PING :still").await;
    assert_eq!(irc.next_is("PONG").await.text(), "still");
    irc.send("PASS late").await;
    irc.next_is("462").await;
    irc.send("CAP FROB").await;
    irc.next_is("410").await;
    irc.send("CAP REQ :no-such-cap").await;
    assert_eq!(irc.next_is("CAP").await.params[1], "NAK");
    irc.send("QUIT :done").await;
    let error = irc.expect("ERROR").await;
    assert!(error.text().contains("Quit: done"), "{}", error.raw);
    assert!(irc.closed_within(Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_ended_with_sendq_exceeded_while_others_get_everything() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.push_queue_bytes = 64 * 1024;
        c.max_send_rate = 0;
    })
    .await;
    let mut bob = server.user("bob").await;
    bob.ok("JOIN #busy").await;
    server.user("stuck").await;
    server.user("reader").await;
    let addr = irc_addr(&server);
    let mut stuck = Irc::sasl(addr, "stuck", "pw", "").await;
    stuck.send("JOIN #busy").await;
    stuck.expect("366").await;
    let mut reader = Irc::sasl(addr, "reader", "pw", "").await;
    reader.send("JOIN #busy").await;
    reader.expect("366").await;
    bob.line().await;
    bob.line().await;
    // `stuck` stops reading; bob fills the room with 16 MB, more than the kernel's buffers
    // hold. A message of 4,000 bytes reaches IRC as several lines.
    const MESSAGES: usize = 4000;
    let text = "y".repeat(4000);
    let sender = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            bob.ok(&format!("SEND #busy {text}")).await;
        }
        bob
    });
    let mut got = 0;
    while got < MESSAGES * 4000 {
        let line = reader.expect("PRIVMSG").await;
        assert_eq!(line.params[0], "#busy");
        got += line.text().len();
    }
    assert_eq!(got, MESSAGES * 4000, "the reader got every byte");
    sender.await.unwrap();
    // Now it reads: the flood it could hold, then why it was disconnected.
    let mut error = None;
    while let Some(line) = stuck.try_line(Duration::from_secs(10)).await {
        if line.command == "ERROR" {
            error = Some(line);
            break;
        }
    }
    let error = error.expect("an ERROR line before the close");
    assert_eq!(error.text(), "SendQ exceeded");
    assert!(stuck.closed_within(Duration::from_secs(5)).await);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_disconnected() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_ping_interval = 1;
    })
    .await;
    let mut irc = Irc::connect(irc_addr(&server)).await;
    irc.send("NICK quiet").await;
    irc.send("USER q 0 * :q").await;
    // Read without answering PINGs.
    let mut pinged = false;
    let mut error = None;
    while let Some(line) = irc.try_line(Duration::from_secs(5)).await {
        match line.command.as_str() {
            "PING" => pinged = true,
            "ERROR" => {
                error = Some(line);
                break;
            }
            _ => {}
        }
    }
    assert!(pinged, "a PING came first");
    assert!(error.expect("an ERROR").text().contains("Ping timeout"));
    // One that answers stays.
    let mut alive = Irc::register(irc_addr(&server), "alive").await;
    let (mut pings, until) = (0, tokio::time::Instant::now() + Duration::from_secs(4));
    while tokio::time::Instant::now() < until {
        if let Some(line) = alive.try_line(Duration::from_millis(200)).await {
            assert_ne!(line.command, "ERROR", "{}", line.raw);
            if line.command == "PING" {
                pings += 1;
                alive.send(&format!("PONG :{}", line.text())).await;
            }
        }
    }
    assert!(pings >= 1);
    alive.send("PING :ok").await;
    assert_eq!(alive.expect("PONG").await.text(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn the_default_port_taken_leaves_the_door_closed_and_the_banner_says_so() {
    // Whoever holds 6667 (this test, or another program), chatd cannot have it.
    let _held = std::net::TcpListener::bind("127.0.0.1:6667");
    let mut config = chatd::Config::for_tests("sqlite::memory:");
    config.irc_port = None;
    let server = chatd::Server::bind(config).await.expect("starts without IRC");
    assert!(server.irc_addr().is_none());
    let banner = server.banner();
    assert!(banner.contains("No IRC: port 6667 is taken"), "{banner}");
    assert!(banner.contains("--irc-port N"), "{banner}");
    let mut config = chatd::Config::for_tests("sqlite::memory:");
    config.irc_port = Some(0);
    let server = chatd::Server::bind(config).await.unwrap();
    let port = server.irc_addr().unwrap().port();
    assert!(
        server.banner().contains(&format!("/connect 127.0.0.1 {port}")),
        "{}",
        server.banner()
    );
}

fn backends(test: &str) -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    all.extend(Backend::postgres(test));
    all
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn irc_clients_on_two_nodes_share_a_channel_in_one_order() {
    let Some(backend) = Backend::postgres("irc_clients_on_two_nodes") else {
        return;
    };
    let db = std::sync::Arc::new(common::TestDb::create(backend).await);
    let a = TestServer::on_db(db.clone(), |c| c.load_test_hashing = true).await;
    let b = TestServer::on_db(db.clone(), |c| c.load_test_hashing = true).await;
    a.user("ann").await;
    b.user("ben").await;
    let mut ann = Irc::sasl(irc_addr(&a), "ann", "pw", "message-tags").await;
    let mut ben = Irc::sasl(irc_addr(&b), "ben", "pw", "message-tags").await;
    ann.send("JOIN #both").await;
    ann.expect("366").await;
    ben.send("JOIN #both").await;
    assert_eq!(ben.expect("353").await.text(), "~ann ben");
    assert_eq!(
        ann.expect("JOIN").await.nick(),
        "ben",
        "a join on node B reaches node A"
    );
    // Both talk at once; each sees the other's messages in id order, exactly once.
    for i in 0..50 {
        ann.send(&format!("PRIVMSG #both :ann {i}")).await;
        ben.send(&format!("PRIVMSG #both :ben {i}")).await;
    }
    for (me, client, other) in [("ann", &mut ann, "ben"), ("ben", &mut ben, "ann")] {
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        while texts.len() < 50 {
            let line = client.expect("PRIVMSG").await;
            assert_eq!(line.nick(), other, "{me} is not pushed its own messages");
            ids.push(line.tag("msgid").unwrap().parse::<i64>().unwrap());
            texts.push(line.text().to_string());
        }
        let expected: Vec<String> = (0..50).map(|i| format!("{other} {i}")).collect();
        assert_eq!(texts, expected, "{me} got {other}'s messages once each, in order");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{me}: ids rise: {ids:?}");
    }
    // A removal on node A reaches the removed client on node B.
    ann.send("KICK #both ben :bye").await;
    let kicked = ben.expect("KICK").await;
    assert_eq!(kicked.params, ["#both", "ben", "bye"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn chathistory_reads_the_same_history_as_history_and_http() {
    for backend in backends("irc_chathistory") {
        let server = TestServer::on_with(backend, |c| c.load_test_hashing = true).await;
        let mut bob = server.user("bob").await;
        bob.ok("JOIN #log").await;
        server.user("alice").await;
        let mut line_alice = server.client().await;
        line_alice.ok("AUTH alice pw").await;
        line_alice.ok("JOIN #log").await;
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(bob.ok(&format!("SEND #log m{i}")).await.parse::<i64>().unwrap());
        }
        let dm_to_alice: i64 = bob.ok("SEND alice psst").await.parse().unwrap();
        let dm_to_bob: i64 = line_alice.ok("SEND bob what").await.parse().unwrap();
        let mut irc = Irc::sasl(
            irc_addr(&server),
            "alice",
            "pw",
            "batch server-time message-tags draft/chathistory",
        )
        .await;
        irc.until("366").await;
        let isupport: Vec<&str> = irc
            .seen
            .iter()
            .filter(|l| l.command == "005")
            .flat_map(|l| l.params.iter().map(String::as_str))
            .collect();
        assert!(isupport.contains(&"CHATHISTORY=100"), "{isupport:?}");

        async fn page(irc: &mut Irc, command: &str) -> Vec<(i64, String, String)> {
            irc.send(command).await;
            let start = irc.expect("BATCH").await;
            assert!(start.params[0].starts_with('+'), "{}", start.raw);
            assert_eq!(start.params[1], "chathistory");
            let reference = &start.params[0][1..];
            let mut rows = Vec::new();
            loop {
                let line = irc.line().await;
                if line.command == "BATCH" {
                    assert_eq!(line.params[0], format!("-{reference}"));
                    return rows;
                }
                assert_eq!(line.command, "PRIVMSG", "{}", line.raw);
                assert_eq!(line.tag("batch"), Some(reference));
                assert!(line.tag("time").is_some());
                let id = line.tag("msgid").unwrap().parse().unwrap();
                rows.push((id, line.nick().to_string(), line.text().to_string()));
            }
        }
        let latest = page(&mut irc, "CHATHISTORY LATEST #log * 10").await;
        assert_eq!(latest.iter().map(|r| r.0).collect::<Vec<_>>(), ids[20..]);
        assert_eq!(latest[0].1, "bob");
        assert_eq!(latest[0].2, "m20");
        let before = page(&mut irc, &format!("CHATHISTORY BEFORE #log msgid={} 5", ids[10])).await;
        assert_eq!(before.iter().map(|r| r.0).collect::<Vec<_>>(), ids[5..10]);
        let after = page(&mut irc, &format!("CHATHISTORY AFTER #log msgid={} 3", ids[10])).await;
        assert_eq!(after.iter().map(|r| r.0).collect::<Vec<_>>(), ids[11..14]);
        let between = page(
            &mut irc,
            &format!("CHATHISTORY BETWEEN #log msgid={} msgid={} 100", ids[3], ids[7]),
        )
        .await;
        assert_eq!(between.iter().map(|r| r.0).collect::<Vec<_>>(), ids[4..7]);
        let since = page(
            &mut irc,
            &format!("CHATHISTORY LATEST #log msgid={} 100", ids[27]),
        )
        .await;
        assert_eq!(since.iter().map(|r| r.0).collect::<Vec<_>>(), ids[28..]);
        // By time: the commit time HISTORY shows for m25, exactly.
        let mut reader = server.client().await;
        reader.ok("AUTH bob pw").await;
        let shown = reader.cmd(&format!("HISTORY #log after {}", ids[24])).await;
        // Only ROOM lines: this session of bob's may also be pushed alice's direct message.
        let m25 = shown
            .data
            .iter()
            .filter(|l| l.starts_with("ROOM "))
            .map(|l| Msg::parse_room(l))
            .find(|m| m.id == ids[25])
            .expect("m25 in the history");
        // Times are shown to the millisecond, and a time stands for its millisecond: what is
        // after m25's time is after every message shown at that time, m25 included.
        let by_time = page(
            &mut irc,
            &format!("CHATHISTORY AFTER #log timestamp={} 2", m25.time),
        )
        .await;
        let got: Vec<i64> = by_time.iter().map(|r| r.0).collect();
        let at = ids.iter().position(|id| *id == got[0]).expect("a room message");
        assert!(at > 25, "{got:?}");
        assert_eq!(got, ids[at..(at + 2).min(30)]);
        let around = page(&mut irc, &format!("CHATHISTORY AROUND #log msgid={} 1", ids[10])).await;
        assert_eq!(around.iter().map(|r| r.0).collect::<Vec<_>>(), [ids[10]]);
        let around = page(&mut irc, &format!("CHATHISTORY AROUND #log msgid={} 3", ids[10])).await;
        assert_eq!(around.iter().map(|r| r.0).collect::<Vec<_>>(), ids[9..12]);
        let by_time = page(
            &mut irc,
            &format!("CHATHISTORY BEFORE #log timestamp={} 1", m25.time),
        )
        .await;
        assert!(by_time[0].0 < ids[25] && by_time[0].0 > ids[15], "{by_time:?}");
        // A direct conversation: both sides, as sent.
        let talk = page(&mut irc, "CHATHISTORY LATEST bob * 10").await;
        assert_eq!(
            talk,
            [
                (dm_to_alice, "bob".to_string(), "psst".to_string()),
                (dm_to_bob, "alice".to_string(), "what".to_string())
            ]
        );
        // Refusals.
        bob.ok("JOIN #secret").await;
        irc.send("CHATHISTORY LATEST #secret * 10").await;
        let fail = irc.expect("FAIL").await;
        assert_eq!(
            fail.params[..3],
            [
                "CHATHISTORY".to_string(),
                "INVALID_TARGET".to_string(),
                "LATEST".to_string()
            ]
        );
        irc.send("CHATHISTORY LATEST #log * zero").await;
        assert_eq!(irc.expect("FAIL").await.params[1], "INVALID_PARAMS");
        irc.send("CHATHISTORY FROB #log * 1").await;
        assert_eq!(irc.expect("FAIL").await.params[1], "UNKNOWN_COMMAND");
        server.stop().await;
    }
}

#[tokio::test]
async fn read_markers_are_the_rooms_read_marks_on_every_door() {
    for backend in backends("irc_read_marker") {
        let server = TestServer::on_with(backend, |c| c.load_test_hashing = true).await;
        let mut bob = server.user("bob").await;
        bob.ok("JOIN #rm").await;
        let mut alice_line = server.user("alice").await;
        alice_line.ok("JOIN #rm").await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(bob.ok(&format!("SEND #rm r{i}")).await.parse::<i64>().unwrap());
        }
        let mut irc = Irc::sasl(irc_addr(&server), "alice", "pw", "server-time draft/read-marker").await;
        irc.expect("JOIN").await;
        // The mark comes after the JOIN and before the end of the names.
        let (mark, before) = irc.until("MARKREAD").await;
        assert!(!before.iter().any(|l| l.command == "366"), "MARKREAD before 366");
        irc.expect("366").await;
        let mut reader = server.client().await;
        reader.ok("AUTH bob pw").await;
        let rows: Vec<Msg> = reader
            .cmd("HISTORY #rm")
            .await
            .data
            .iter()
            .map(|l| Msg::parse_room(l))
            .collect();
        // Joining read the room up to the join: the mark is the join's time.
        let joined = rows.iter().find(|m| m.text == "alice joined").unwrap();
        assert_eq!(
            mark.params,
            ["#rm".to_string(), format!("timestamp={}", joined.time)]
        );
        let third = rows.iter().find(|m| m.id == ids[2]).unwrap().time.clone();
        irc.send(&format!("MARKREAD #rm timestamp={third}")).await;
        let set = irc.expect("MARKREAD").await;
        assert_eq!(set.params, ["#rm".to_string(), format!("timestamp={third}")]);
        // ROOMS on the line protocol agrees: unread are the messages after that millisecond
        // (two, unless r3 or r4 was committed within the same millisecond as r2).
        let after = rows
            .iter()
            .filter(|m| ids.contains(&m.id) && m.time > third)
            .count();
        let unread = format!("JOINED #rm 2 {after}");
        let rooms = alice_line.cmd("ROOMS").await;
        assert!(
            rooms.data.iter().any(|l| l.starts_with(&unread)),
            "{unread}: {:?}",
            rooms.data
        );
        // An older mark does not move it back.
        let first = rows.iter().find(|m| m.id == ids[0]).unwrap().time.clone();
        irc.send(&format!("MARKREAD #rm timestamp={first}")).await;
        assert_eq!(
            irc.expect("MARKREAD").await.params[1],
            format!("timestamp={third}")
        );
        // READ on the line protocol moves it; MARKREAD reads it back.
        alice_line.ok("READ #rm").await;
        irc.send("MARKREAD #rm").await;
        let last = rows.iter().find(|m| m.id == ids[4]).unwrap().time.clone();
        assert_eq!(
            irc.expect("MARKREAD").await.params[1],
            format!("timestamp={last}")
        );
        // A direct conversation's mark is kept in the node's memory, as given.
        irc.send("MARKREAD bob").await;
        assert_eq!(irc.expect("MARKREAD").await.params, ["bob", "*"]);
        irc.send("MARKREAD bob timestamp=2020-01-02T03:04:05.678Z").await;
        let direct = irc.expect("MARKREAD").await;
        assert_eq!(direct.params, ["bob", "timestamp=2020-01-02T03:04:05.678Z"]);
        irc.send("MARKREAD bob *").await;
        assert_eq!(
            irc.expect("FAIL").await.params[1],
            "INVALID_PARAMS",
            "* is the server's"
        );
        irc.send("MARKREAD #rm timestamp=yesterday").await;
        assert_eq!(irc.expect("FAIL").await.params[1], "INVALID_PARAMS");
        irc.send("MARKREAD").await;
        assert_eq!(irc.expect("FAIL").await.params[1], "NEED_MORE_PARAMS");
        server.stop().await;
    }
}

#[tokio::test]
async fn guests_talk_live_in_public_rooms_and_nothing_they_say_is_kept() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
        c.irc_identify_within = 1;
    })
    .await;
    let addr = irc_addr(&server);
    let mut bob = server.user("bob").await;
    bob.ok("JOIN #class").await;
    bob.ok("JOIN #secret").await;
    bob.ok("MODE #secret +i").await;
    server.user("alice").await;
    let mut alice = Irc::sasl(addr, "alice", "pw", "message-tags account-tag").await;
    alice.send("JOIN #class").await;
    alice.until("366").await;
    let _ = bob.line().await; // alice joined

    // Any free nick registers without an account, and is told what a guest may do.
    let mut guest = Irc::register(addr, "visitor").await;
    let hint = guest.expect("NOTICE").await;
    assert!(hint.text().contains("guest"), "{}", hint.raw);
    // Its nick is its own on this server, whatever the case.
    let mut twin = Irc::connect(addr).await;
    twin.send("NICK Visitor").await;
    assert_eq!(twin.expect("433").await.params[1], "Visitor");
    twin.send("NICK alice").await;
    twin.send("USER t 0 * :t").await;
    twin.until("376").await;
    let rename_hint = twin.expect("NOTICE").await;
    assert!(
        rename_hint.text().contains("registered account"),
        "{}",
        rename_hint.raw
    );

    // Public rooms only (a name no room has is a local channel: see the next test).
    guest.send("JOIN #secret").await;
    assert_eq!(guest.expect("473").await.params[1], "#secret");
    guest.send("JOIN #CLASS").await;
    let join = guest.expect("JOIN").await;
    assert_eq!(join.params, ["#class"]);
    let names = guest.expect("353").await;
    assert_eq!(names.text(), "~bob alice visitor");
    let seen = alice.expect("JOIN").await;
    assert_eq!((seen.nick(), seen.params[0].as_str()), ("visitor", "#class"));

    // A guest's message reaches IRC live, without an id or an account; it is not kept.
    guest.send("PRIVMSG #class :hello, I am visiting").await;
    let said = alice.expect("PRIVMSG").await;
    assert_eq!(said.nick(), "visitor");
    assert_eq!(said.params, ["#class", "hello, I am visiting"]);
    assert_eq!(said.tag("msgid"), None, "a live message has no id");
    assert_eq!(said.tag("account"), None, "a guest has no account");
    // What members say reaches the guest, from every door.
    let id = bob.ok("SEND #class welcome, visitor").await;
    let heard = guest.expect("PRIVMSG").await;
    assert_eq!((heard.nick(), heard.text()), ("bob", "welcome, visitor"));
    assert_eq!(alice.expect("PRIVMSG").await.text(), "welcome, visitor");
    let history = bob.cmd("HISTORY #class").await;
    let texts: Vec<String> = history.data.iter().map(|l| Msg::parse_room(l).text).collect();
    assert!(
        texts.contains(&"welcome, visitor".to_string()),
        "{texts:?} ({id})"
    );
    assert!(
        !texts.iter().any(|t| t.contains("visiting")),
        "nothing a guest says is stored: {texts:?}"
    );

    // Direct: to and from IRC accounts here; telnet-only users cannot be reached.
    guest.send("PRIVMSG alice :psst").await;
    let psst = alice.expect("PRIVMSG").await;
    assert_eq!(
        (psst.nick(), psst.params[0].as_str(), psst.text()),
        ("visitor", "alice", "psst")
    );
    alice.send("PRIVMSG visitor :hi there").await;
    let back = guest.expect("PRIVMSG").await;
    assert_eq!((back.nick(), back.params[0].as_str()), ("alice", "visitor"));
    guest.send("PRIVMSG bob :are you there?").await;
    let nobody = guest.expect("401").await;
    assert!(nobody.text().contains("not kept"), "{}", nobody.raw);

    // A guest never takes an account's nick, and does not run the room.
    guest.send("NICK bob").await;
    assert_eq!(guest.expect("433").await.params[1], "bob");
    guest.send("TOPIC #class :mine now").await;
    assert_eq!(guest.expect("482").await.params[1], "#class");
    guest.send("KICK #class alice").await;
    assert_eq!(guest.expect("482").await.params[1], "#class");
    guest.send("NICK tourist").await;
    let renamed = alice.expect("NICK").await;
    assert_eq!((renamed.nick(), renamed.text()), ("visitor", "tourist"));
    guest.expect("NICK").await;
    alice.send("WHOIS tourist").await;
    let (end, whois) = alice.until("318").await;
    assert_eq!(end.params[1], "tourist");
    assert!(whois.iter().all(|l| l.command != "330"), "a guest has no account");
    guest.send("PART #class :bye").await;
    guest.expect("PART").await;
    let parted = alice.expect("PART").await;
    assert_eq!(parted.nick(), "tourist");

    // Who sat on an account's nick without logging in goes on as a guest, renamed.
    let renamed = twin.expect("NICK").await;
    assert!(renamed.text().starts_with("Guest"), "{}", renamed.raw);
    let as_guest = twin.expect("NOTICE").await;
    assert!(as_guest.text().contains("guest"), "{}", as_guest.raw);
    twin.send("JOIN #class").await;
    twin.until("366").await;
    let joined = alice.expect("JOIN").await;
    assert_eq!(joined.nick(), renamed.text());
    twin.send("QUIT :done").await;
    let left = alice.expect("PART").await;
    assert_eq!(
        left.nick(),
        renamed.text(),
        "a guest that quits leaves its channels"
    );

    // Registering makes the guest an account, whose messages are kept.
    guest.send("PRIVMSG NickServ :REGISTER secret").await;
    assert_eq!(guest.expect("900").await.params[2], "tourist");
    bob.ok("SEND tourist now you are one of us").await;
    let kept = guest.expect("PRIVMSG").await;
    assert_eq!(kept.text(), "now you are one of us");
    server.stop().await;
}

#[tokio::test]
async fn guests_make_local_channels_with_ops_keys_limits_bans_and_voice_and_nothing_is_kept() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
    })
    .await;
    let addr = irc_addr(&server);
    let mut bob = server.user("bob").await;
    server.user("alice").await;

    // A name no room has: the guest makes a local channel and is its operator.
    let mut ann = Irc::register(addr, "ann").await;
    ann.send("JOIN #Lab").await;
    assert_eq!(ann.expect("JOIN").await.params, ["#Lab"]);
    let (_, names) = ann.until("366").await;
    assert_eq!(names.last().unwrap().text(), "@ann");
    ann.send("MODE #lab").await;
    assert_eq!(ann.expect("324").await.params[1..], ["#Lab", "+nt"]);
    assert!(ann.expect("329").await.params[2].parse::<i64>().is_ok());
    ann.send("LIST").await;
    let (_, listed) = ann.until("323").await;
    assert!(listed.iter().any(|l| l.command == "322" && l.params[1] == "#Lab"));

    // A key keeps out who does not give it; 696 for a key that cannot be typed.
    ann.send("MODE #lab +k :two words").await;
    assert_eq!(ann.expect("696").await.params[1..4], ["#Lab", "k", "*"]);
    ann.send("MODE #lab +k beer").await;
    assert_eq!(ann.expect("MODE").await.params, ["#Lab", "+k", "beer"]);
    let mut cy = Irc::register(addr, "cy").await;
    cy.send("JOIN #lab").await;
    assert_eq!(cy.expect("475").await.params[1], "#lab");
    cy.send("JOIN #lab beer").await;
    cy.until("366").await;
    let joined = ann.expect("JOIN").await;
    assert_eq!((joined.nick(), joined.params[0].as_str()), ("cy", "#Lab"));

    // A limit keeps out even an account; an invitation lets it past the key and the limit.
    ann.send("MODE #lab +l 2").await;
    ann.expect("MODE").await;
    let mut alice = Irc::sasl(addr, "alice", "pw", "account-tag").await;
    alice.send("JOIN #lab beer").await;
    assert_eq!(alice.expect("471").await.params[1], "#lab");
    ann.send("INVITE alice #lab").await;
    assert_eq!(ann.expect("341").await.params[1..], ["alice", "#Lab"]);
    let invited = alice.expect("INVITE").await;
    assert_eq!((invited.nick(), invited.params[1].as_str()), ("ann", "#Lab"));
    alice.send("JOIN #lab").await;
    let (_, names) = alice.until("366").await;
    assert_eq!(names.last().unwrap().text(), "@ann cy alice");
    cy.expect("JOIN").await;
    ann.expect("JOIN").await;

    // +m: only ops and voices speak. What an account says there is live: it reaches the
    // channel with its account, and no room or history holds it.
    ann.send("MODE #lab +m").await;
    ann.expect("MODE").await;
    assert_eq!(alice.expect("MODE").await.params, ["#Lab", "+m"]);
    cy.send("PRIVMSG #lab :can I talk?").await;
    assert_eq!(cy.expect("404").await.params[1], "#lab");
    ann.send("MODE #lab +v cy").await;
    ann.expect("MODE").await;
    assert_eq!(alice.expect("MODE").await.params, ["#Lab", "+v", "cy"]);
    cy.send("PRIVMSG #lab :now I can").await;
    let heard = alice.expect("PRIVMSG").await;
    assert_eq!((heard.nick(), heard.text()), ("cy", "now I can"));
    alice.send("MODE #lab +o cy").await;
    assert_eq!(alice.expect("482").await.params[1], "#lab");
    ann.send("MODE #lab +v alice").await;
    ann.expect("MODE").await;
    alice.send("NOTICE #lab :\u{1}ACTION waves\u{1}").await;
    let notice = cy.expect("NOTICE").await;
    assert_eq!(
        notice.text(),
        "\u{1}ACTION waves\u{1}",
        "IRC to IRC, as it was sent"
    );
    assert!(
        bob.cmd("HISTORY #Lab").await.last.starts_with("ERR"),
        "no room #Lab"
    );

    // Topic, kick with its reason, and a ban that holds.
    ann.send("TOPIC #lab :lab session").await;
    assert_eq!(cy.expect("TOPIC").await.text(), "lab session");
    cy.send("TOPIC #lab").await;
    assert_eq!(cy.expect("332").await.text(), "lab session");
    assert_eq!(cy.expect("333").await.params[2], "ann");
    ann.send("KICK #lab cy :enough").await;
    let kick = cy.expect("KICK").await;
    assert_eq!((kick.params[1].as_str(), kick.text()), ("cy", "enough"));
    assert_eq!(alice.expect("KICK").await.params[1], "cy");
    ann.send("MODE #lab -l+b cy").await;
    assert_eq!(ann.expect("MODE").await.params, ["#Lab", "-l+b", "cy!*@*"]);
    cy.send("JOIN #lab beer").await;
    assert_eq!(cy.expect("474").await.params[1], "#lab");
    ann.send("MODE #lab b").await;
    let ban = ann.expect("367").await;
    assert_eq!(ban.params[1..4], ["#Lab", "cy!*@*", "ann"]);
    ann.expect("368").await;

    // Leaving: a PART's reason and a QUIT reach who is left; the last one out ends it.
    ann.send("QUIT :lunch").await;
    let quit = alice.expect("QUIT").await;
    assert_eq!((quit.nick(), quit.text()), ("ann", "Quit: lunch"));
    alice.send("PART #lab :done").await;
    assert_eq!(alice.expect("PART").await.text(), "done");
    cy.send("JOIN #lab").await;
    let (_, names) = cy.until("366").await;
    assert_eq!(
        names.last().unwrap().text(),
        "@cy",
        "a new channel, with no ban or key"
    );
    server.stop().await;
}

#[tokio::test]
async fn operators_kill_and_wallops_and_who_help_list_and_statusmsg_answer_as_the_rfcs_say() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
        c.irc_opers = vec!["teacher".to_string()];
    })
    .await;
    let addr = irc_addr(&server);
    server.user("teacher").await;
    server.user("pupil").await;

    // OPER checks the account's own password; a wrong one and a non-operator get 464.
    let mut op = Irc::register(addr, "desk").await;
    op.send("OPER teacher wrong").await;
    op.expect("464").await;
    op.send("OPER pupil pw").await;
    op.expect("464").await;
    op.send("OPER teacher pw").await;
    op.expect("381").await;
    assert_eq!(op.expect("MODE").await.params, ["desk", "+o"]);
    op.send("MODE desk").await;
    assert_eq!(op.expect("221").await.params[1], "+o");

    // WALLOPS reaches operators and +w users, not others; KILL is for operators only.
    let mut ann = Irc::register(addr, "ann").await;
    let mut bob = Irc::register(addr, "bob").await;
    ann.send("MODE ann +w").await;
    assert_eq!(ann.expect("MODE").await.params, ["ann", "+w"]);
    bob.send("WALLOPS :me too").await;
    bob.expect("481").await;
    bob.send("KILL ann :no").await;
    bob.expect("481").await;
    op.send("WALLOPS :class starts").await;
    assert_eq!(op.expect("WALLOPS").await.text(), "class starts");
    let wallops = ann.expect("WALLOPS").await;
    assert_eq!((wallops.nick(), wallops.text()), ("desk", "class starts"));

    // WHO shows the operator (`*`); WHOX gives the fields asked for, in WHOX's order.
    ann.send("WHO desk").await;
    assert_eq!(ann.expect("352").await.params[6], "H*");
    ann.send("WHO desk %na,7").await;
    let whox = ann.expect("354").await;
    ann.expect("315").await;
    assert_eq!(
        whox.params[1..],
        ["desk", "0"],
        "t was not asked; a guest has no account"
    );
    ann.send("WHO desk %tnf,7").await;
    assert_eq!(ann.expect("354").await.params[1..], ["7", "desk", "H*"]);

    // HELP comes from the command table.
    bob.send("HELP privmsg").await;
    let start = bob.expect("704").await;
    assert_eq!(start.params[1], "PRIVMSG");
    assert!(start.text().starts_with("PRIVMSG <target>"), "{}", start.raw);
    bob.expect("706").await;
    bob.send("HELP FROBNICATE").await;
    bob.expect("524").await;

    // STATUSMSG: @#lab reaches the ops of the channel only. KICK takes several nicks.
    ann.send("JOIN #lab").await;
    ann.until("366").await;
    for irc in [&mut bob, &mut op] {
        irc.send("JOIN #lab").await;
        irc.until("366").await;
    }
    ann.send("MODE #lab +o desk").await;
    bob.send("PRIVMSG @#lab :ops only").await;
    let to_ops = op.expect("PRIVMSG").await;
    assert_eq!(to_ops.params, ["@#lab", "ops only"]);
    assert_eq!(ann.expect("PRIVMSG").await.params[0], "@#lab");
    bob.send("PING :sync").await;
    let (_, before) = bob.until("PONG").await;
    assert!(before.iter().all(|l| l.command != "PRIVMSG"), "{before:?}");

    // LIST takes masks and sizes (ELIST=MNU).
    bob.send("LIST >2").await;
    let (_, listed) = bob.until("323").await;
    assert!(listed.iter().any(|l| l.command == "322" && l.params[1] == "#lab"));
    bob.send("LIST !#l*").await;
    let (_, listed) = bob.until("323").await;
    assert!(listed.iter().all(|l| l.command != "322"), "{listed:?}");

    ann.send("KICK #lab bob,desk :bye").await;
    assert_eq!(ann.expect("KICK").await.params[1], "bob");
    assert_eq!(ann.expect("KICK").await.params[1], "desk");

    // KILL ends the connection: it is told why, and its channels see it quit.
    bob.send("JOIN #lab").await;
    bob.until("366").await;
    op.send("KILL bob :homework time").await;
    let (error, _) = bob.until("ERROR").await;
    assert!(
        error.text().contains("Killed (desk (homework time))"),
        "{}",
        error.raw
    );
    let quit = ann.expect("QUIT").await;
    assert_eq!(
        (quit.nick(), quit.text()),
        ("bob", "Killed (desk (homework time))")
    );
    op.send("KILL nobody").await;
    op.expect("401").await;
    server.stop().await;
}

#[tokio::test]
async fn live_lines_carry_client_tags_and_ids_and_local_history_and_nicks_are_found_without_case() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
    })
    .await;
    let addr = irc_addr(&server);
    server.user("alice").await;
    let caps = "message-tags server-time echo-message batch draft/chathistory draft/read-marker";
    let mut alice = Irc::sasl(addr, "alice", "pw", caps).await;
    let mut guest = Irc::connect(addr).await;
    guest.send(&format!("CAP REQ :{caps}")).await;
    guest.expect("CAP").await;
    guest.send("CAP END").await;
    guest.send("NICK visitor").await;
    guest.send("USER v 0 * :v").await;
    guest.until("376").await;
    let mut plain = Irc::register(addr, "plain").await;

    // A local channel: client-only tags reach clients with message-tags, with an id.
    for irc in [&mut guest, &mut alice, &mut plain] {
        irc.send("JOIN #live").await;
        irc.until("366").await;
    }
    guest
        .send("@+draft/reply=x;dropped=1 PRIVMSG #live :\u{1}PING 1\u{1}")
        .await;
    let heard = alice.expect("PRIVMSG").await;
    assert_eq!(heard.text(), "\u{1}PING 1\u{1}", "IRC to IRC, as sent");
    assert_eq!(heard.tag("+draft/reply"), Some("x"));
    assert_eq!(heard.tag("dropped"), None, "only client tags are relayed");
    let id = heard.tag("msgid").expect("a live line has an id").to_string();
    assert!(id.starts_with('l'), "{id}");
    let echo = guest.expect("PRIVMSG").await;
    assert_eq!(echo.tag("msgid"), Some(id.as_str()), "the echo is the same line");
    let bare = plain.expect("PRIVMSG").await;
    assert!(
        bare.raw.starts_with(':'),
        "no tags without message-tags: {}",
        bare.raw
    );
    alice.send("MODE #live +C").await;
    assert_eq!(alice.expect("482").await.params[1], "#live", "only its operator");
    guest.send("MODE #live +C").await;
    assert_eq!(alice.expect("MODE").await.params, ["#live", "+C"]);
    alice.send("PRIVMSG #live :\u{1}VERSION\u{1}").await;
    assert_eq!(
        alice.expect("404").await.params[1],
        "#live",
        "+C: no CTCP but ACTION"
    );
    guest.send("@+typing=active TAGMSG #live").await;
    assert_eq!(alice.expect("TAGMSG").await.tag("+typing"), Some("active"));
    plain.send("PING :sync").await;
    let (_, before) = plain.until("PONG").await;
    assert!(before.iter().all(|l| l.command != "TAGMSG"), "{before:?}");

    // The channel keeps its last lines for CHATHISTORY while it exists.
    guest.send("PRIVMSG #live :second").await;
    alice.expect("PRIVMSG").await;
    alice.send("CHATHISTORY LATEST #live * 10").await;
    let (_, batch) = alice.until("BATCH").await;
    assert!(batch.is_empty());
    let (_, lines) = alice.until("BATCH").await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text()).collect();
    assert_eq!(texts, ["\u{1}PING 1\u{1}", "second"]);
    alice
        .send(&format!("CHATHISTORY AFTER #live msgid={id} 10"))
        .await;
    alice.until("BATCH").await;
    let (_, lines) = alice.until("BATCH").await;
    assert_eq!(lines.iter().map(|l| l.text()).collect::<Vec<_>>(), ["second"]);

    // A guest's read marks live in memory, as given.
    guest
        .send("MARKREAD #live timestamp=2020-01-01T00:00:00.000Z")
        .await;
    assert_eq!(
        guest.expect("MARKREAD").await.params[1],
        "timestamp=2020-01-01T00:00:00.000Z"
    );

    // A nick typed in another case finds the account; a message to oneself comes back.
    plain.send("WHOIS ALICE").await;
    assert_eq!(plain.expect("311").await.params[1], "alice");
    alice.send("PRIVMSG Alice :note to self").await;
    let (_, lines) = alice.until("PRIVMSG").await;
    drop(lines);
    let mut seen = alice.drain(std::time::Duration::from_millis(300)).await;
    seen.retain(|l| l.command == "PRIVMSG");
    assert_eq!(seen.len(), 1, "the echo and the delivery, once each: {seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn without_guests_a_nick_without_an_account_can_only_log_in_or_register() {
    let server = server().await;
    let addr = irc_addr(&server);
    let mut bob = server.user("bob").await;
    bob.ok("JOIN #class").await;
    let mut nobody = Irc::register(addr, "nobody").await;
    let hint = nobody.expect("NOTICE").await;
    assert!(hint.text().contains("not logged in"), "{}", hint.raw);
    nobody.send("JOIN #class").await;
    nobody.expect("451").await;
    nobody.send("PRIVMSG #class :hello?").await;
    nobody.expect("451").await;
    // Two such connections may share a nick: neither is anybody yet.
    let mut other = Irc::register(addr, "nobody").await;
    other.expect("NOTICE").await;
    server.stop().await;
}

#[tokio::test]
async fn labeled_responses_whowas_time_lusers_and_userhost_in_names() {
    let server = server().await;
    let addr = irc_addr(&server);
    let mut bob = server.user("bob").await;
    bob.ok("JOIN #class").await;
    server.user("alice").await;
    let mut alice = Irc::sasl(addr, "alice", "pw", "batch labeled-response userhost-in-names").await;
    // One 900 for the login, not a second one after the welcome.
    assert_eq!(
        alice.seen.iter().filter(|l| l.command == "900").count(),
        1,
        "{:?}",
        alice.seen
    );
    let lusers: Vec<&str> = alice.seen.iter().map(|l| l.command.as_str()).collect();
    assert!(lusers.contains(&"265") && lusers.contains(&"266"), "{lusers:?}");

    // A command with one line of reply gets the label on it; none, an ACK; more, a batch.
    alice.send("@label=one PING :x").await;
    let pong = alice.expect("PONG").await;
    assert_eq!(pong.tag("label"), Some("one"));
    alice.send("@label=two PONG :x").await;
    let ack = alice.expect("ACK").await;
    assert_eq!(ack.tag("label"), Some("two"));
    alice.send("@label=three JOIN #class").await;
    let start = alice.expect("BATCH").await;
    assert_eq!(start.tag("label"), Some("three"));
    assert_eq!(start.params[1], "labeled-response");
    let reference = start.params[0].trim_start_matches('+').to_string();
    let (end, inside) = alice.until("BATCH").await;
    assert_eq!(end.params, [format!("-{reference}")]);
    assert!(
        inside.iter().all(|l| l.tag("batch") == Some(reference.as_str())),
        "{inside:?}"
    );
    // userhost-in-names: each name with its user and host.
    let names = inside.iter().find(|l| l.command == "353").expect("NAMES");
    assert_eq!(names.text(), "~bob!bob@chatd alice!alice@chatd");

    alice.send("TIME").await;
    alice.expect("391").await;
    // WHOWAS: who left lately, with the user and real name they registered with.
    let mut gone = Irc::connect(addr).await;
    gone.send("NICK wanderer").await;
    gone.send("USER wuser 0 * :Wandering Wendy").await;
    gone.until("376").await;
    gone.send("QUIT").await;
    assert!(gone.closed_within(Duration::from_secs(5)).await);
    alice.send("WHOWAS wanderer").await;
    let was = alice.expect("314").await;
    assert_eq!(&was.params[1..4], ["wanderer", "wuser", "chatd"]);
    assert_eq!(was.text(), "Wandering Wendy");
    alice.expect("369").await;
    alice.send("WHOWAS nobody").await;
    alice.expect("406").await;
    alice.expect("369").await;
    // A USER without a real name is too few parameters.
    let mut nameless = Irc::connect(addr).await;
    nameless.send("NICK x").await;
    nameless.send("USER x 0 * :").await;
    assert_eq!(nameless.expect("461").await.params[1], "USER");
    server.stop().await;
}

#[tokio::test]
async fn registration_during_sasl_aborts_it_and_an_overlong_sasl_line_is_905() {
    let server = server().await;
    let addr = irc_addr(&server);
    let mut c = Irc::connect(addr).await;
    c.send("CAP LS 302").await;
    c.expect("CAP").await;
    c.send("CAP REQ :sasl").await;
    c.expect("CAP").await;
    c.send("AUTHENTICATE PLAIN").await;
    c.expect("AUTHENTICATE").await;
    c.send("NICK midway").await;
    c.send("USER midway 0 * :Midway").await;
    c.send("CAP END").await;
    c.expect("906").await;
    c.expect("001").await;
    let mut long = Irc::connect(addr).await;
    long.send("CAP REQ :sasl").await;
    long.expect("CAP").await;
    long.send("AUTHENTICATE PLAIN").await;
    long.expect("AUTHENTICATE").await;
    long.send(&format!("AUTHENTICATE {}", "A".repeat(401))).await;
    long.expect("905").await;
    server.stop().await;
}

#[tokio::test]
async fn whois_and_who_show_the_user_and_real_name_and_who_takes_masks() {
    let server = TestServer::start_with(|c| {
        c.load_test_hashing = true;
        c.irc_guests = true;
    })
    .await;
    let addr = irc_addr(&server);
    let mut wendy = Irc::connect(addr).await;
    wendy.send("NICK Wendy").await;
    wendy.send("USER wuser 0 * :Wandering Wendy").await;
    wendy.until("376").await;
    server.user("alice").await;
    let mut alice = Irc::sasl(addr, "alice", "pw", "").await;
    alice.send("WHOIS wendy").await;
    let user = alice.expect("311").await;
    assert_eq!(&user.params[1..4], ["Wendy", "wuser", "chatd"]);
    assert_eq!(user.text(), "Wandering Wendy");
    alice.until("318").await;
    alice.send("WHO WENDY").await;
    let who = alice.expect("352").await;
    assert_eq!(
        (who.params[2].as_str(), who.params[5].as_str()),
        ("wuser", "Wendy")
    );
    assert_eq!(who.text(), "0 Wandering Wendy");
    alice.expect("315").await;
    // A mask matches every user online whose nick it fits, without case.
    alice.send("WHO w*").await;
    let (end, listed) = alice.until("315").await;
    assert_eq!(end.params[1], "w*");
    let nicks: Vec<&str> = listed
        .iter()
        .filter(|l| l.command == "352")
        .map(|l| l.params[5].as_str())
        .collect();
    assert_eq!(nicks, ["Wendy"]);
    alice.send("WHO *").await;
    let (_, listed) = alice.until("315").await;
    let mut nicks: Vec<&str> = listed
        .iter()
        .filter(|l| l.command == "352")
        .map(|l| l.params[5].as_str())
        .collect();
    nicks.sort_unstable();
    assert_eq!(nicks, ["Wendy", "alice"]);
    server.stop().await;
}
