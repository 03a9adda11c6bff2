//! NickServ: accounts for IRC clients that do not speak SASL. It is not a user but a name the
//! door answers for, as IRC services are: `/msg NickServ IDENTIFY <password>` logs in,
//! `/msg NickServ REGISTER <password>` creates the account of the current nick.

use super::client::Client;

/// The name clients send to.
pub const NICK: &str = "NickServ";
/// Its mask, as the source of its notices.
pub const MASK: &str = "NickServ!NickServ@services.chatd";

/// Answers one message to NickServ.
pub async fn handle(c: &mut Client, text: &str) {
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    match (verb.as_str(), args.as_slice()) {
        ("HELP", _) | ("", _) => help(c),
        ("IDENTIFY", [password]) => {
            let account = c.nick.clone();
            identify(c, &account, password).await;
        }
        ("IDENTIFY", [account, password]) => identify(c, account, password).await,
        ("IDENTIFY", _) => c.nickserv("Syntax: IDENTIFY <password>, or IDENTIFY <account> <password>"),
        ("REGISTER", [password]) | ("REGISTER", [password, _]) => register(c, password).await,
        ("REGISTER", _) => {
            c.nickserv("Syntax: REGISTER <password> (creates the account of your current nick)")
        }
        (other, _) => {
            let shown: String = other.chars().take(20).collect();
            c.nickserv(&format!(
                "Unknown command {shown}. /msg NickServ HELP lists what I do"
            ));
        }
    }
}

fn help(c: &mut Client) {
    for line in [
        "NickServ logs you in to your chatd account (the same one as on telnet and the web page).",
        "  IDENTIFY <password>            log in to the account named like your nick",
        "  IDENTIFY <account> <password>  log in to that account (your nick becomes its name)",
        "  REGISTER <password>            create an account named like your nick, and log in",
        "  HELP                           this list",
        "Clients with SASL (PLAIN) log in as they connect, without NickServ.",
    ] {
        c.nickserv(line);
    }
}

async fn identify(c: &mut Client, account: &str, password: &str) {
    if let Some(me) = c.account() {
        let text = format!("You are already logged in as {me}");
        c.nickserv(&text);
        return;
    }
    match c.check_password(account, password).await {
        Ok(user) => {
            c.logged_in(user.clone()).await;
            c.nickserv(&format!("You are now identified for {user}"));
        }
        Err(e) => c.nickserv(&format!("Login to {account} refused: {}", e.message)),
    }
}

async fn register(c: &mut Client, password: &str) {
    if let Some(me) = c.account() {
        let text = format!("You are already logged in as {me}");
        c.nickserv(&text);
        return;
    }
    let nick = c.nick.clone();
    let (chat, peer) = (c.chat.clone(), c.peer.ip());
    match chat.register(&nick, password, peer).await {
        Ok(user) => {
            c.nickserv(&format!("Account {user} registered"));
            c.logged_in(user.clone()).await;
        }
        Err(e) => c.nickserv(&format!("{nick} was not registered: {}", e.message)),
    }
}
